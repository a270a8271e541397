"""What trainer, evaluator, checkpoints, serving and the top-k scorer need from a sequential model.

They talk to :class:`SequenceModel` only and find the class through :func:`model_class` (``training.model``), so a
new model is one new module plus one line in ``_BUILTIN`` (or a :func:`register_model` call). The contract, in the
conventions of :mod:`driftrec.models.batches`: item index 0 is padding, real items are 1..n in ``ItemSpace`` order;
histories are (B, L) index tensors left-padded with 0; interest features are (B, n_categories + 1) distributions.
"""

from __future__ import annotations

import importlib
import io
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

    from driftrec.config import TrainingConfig
    from driftrec.models.batches import ItemSpace


class ModelParams(Protocol):
    """Hyper-parameters and sizes; JSON-serialisable through ``to_dict`` (stored in every checkpoint)."""

    n_items: int
    n_categories: int
    text_dim: int
    max_seq_len: int
    use_text: bool

    def to_dict(self) -> dict: ...


@runtime_checkable
class SequenceModel(Protocol):
    """A torch module scoring the next item after a history; ``forward`` is the training loss (DDP hooks it)."""

    name: ClassVar[str]  # the key of model_class()
    p: ModelParams

    @classmethod
    def from_params(cls, params: dict) -> SequenceModel:
        """A fresh model (random trainable weights, empty side information) from ``p.to_dict()``."""

    @classmethod
    def params_for(cls, space: ItemSpace, tcfg: TrainingConfig) -> ModelParams:
        """The parameters of a model over ``space`` configured by ``tcfg``."""

    def warm_startable(self, tcfg: TrainingConfig, text_dim: int) -> bool:
        """Whether tonight's configuration can continue from this model's weights (same architecture and text)."""

    def set_side_info(self, text: np.ndarray, has_text: np.ndarray, item_category: np.ndarray) -> None:
        """Frozen per-item features, rows = items 1..n: text vectors, 0/1 has-text flags, category indices."""

    def side_info(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`set_side_info` stored, so a checkpoint is self-contained."""

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, d) item representations (row 0 = padding); text-initialised where items have text."""

    def encode(self, seq: torch.Tensor, interest: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) user vectors after each history; next-item logits are ``encode(...) @ item_vectors()[1:].T``.
        ``items``: :meth:`item_vectors` when the caller has it already."""

    def score(self, seq: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """(B, n_items) next-item scores; column k is item k + 1."""

    def forward(self, seq: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, interest: torch.Tensor,
                sampled: int = 0) -> torch.Tensor:
        """The training loss of a :func:`driftrec.models.batches.train_batch` (``sampled``: negatives, 0 = full)."""

    def grow(self, n_items: int, n_categories: int) -> SequenceModel:
        """A copy with room for more items and categories: trained rows kept, new items start from their text
        and category alone (set with :meth:`set_side_info` afterwards)."""

    # torch.nn.Module provides these
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...
    def eval(self) -> Any: ...


_BUILTIN = {"sasrec": "driftrec.models.sasrec:SASRec"}
_REGISTERED: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Make ``cls`` available as ``model_class(cls.name)`` (a class decorator); builtins need no call."""
    _REGISTERED[cls.name] = cls
    return cls


def model_class(name: str) -> type:
    """The model class registered under ``name`` (or at import path ``"package.module:Class"``, which any process
    resolves, e.g. a Spark or Ray worker); a clear error naming the known ones otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    path = _BUILTIN.get(name, name)
    if ":" in path:
        module, attr = path.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    known = sorted(set(_BUILTIN) | set(_REGISTERED))
    raise ValueError(f"unknown model '{name}' (training.model): known models are {', '.join(known)}")


def model_name(model: SequenceModel) -> str:
    """What :func:`model_class` resolves back to ``type(model)`` in any process (stored with the weights): the
    builtin name, else the class's import path."""
    cls = type(model)
    return cls.name if cls.name in _BUILTIN else f"{cls.__module__}:{cls.__qualname__}"


def new_model(name: str, space: ItemSpace, tcfg: TrainingConfig) -> SequenceModel:
    """A fresh ``name`` model over ``space`` (side information filled in), configured by ``tcfg``."""
    cls = model_class(name)
    model = cls.from_params(cls.params_for(space, tcfg).to_dict())
    model.set_side_info(space.text, space.has_text, space.item_category)
    return model


def weights(model: SequenceModel) -> dict:
    """The model's state as contiguous CPU tensors (what a checkpoint or the scoring assets store)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def model_to_bytes(model: SequenceModel) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(weights(model), buf)
    return buf.getvalue()


def load_model(name: str, params: dict, state: dict | bytes) -> SequenceModel:
    """The ``name`` model with ``params`` and ``state`` (tensors, or :func:`model_to_bytes` output read with
    ``weights_only=True``), in eval mode on CPU."""
    import torch

    if isinstance(state, bytes | bytearray):
        state = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
    model = model_class(name).from_params(params)
    model.load_state_dict(state)
    model.eval()
    return model
