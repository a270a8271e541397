"""Self-contained checkpoints of any :class:`~driftrec.models.protocol.SequenceModel`: tensors in ``model.pt``
(loaded with ``weights_only=True``), the rest JSON.

Nothing is ever unpickled: the weights file holds only tensors, and the item space's ids and category names that
give those rows their meaning are tensors or JSON too. ``meta.json`` names the model class (``model``; checkpoints
written before the protocol existed are SASRec).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from driftrec.models.batches import ItemSpace
from driftrec.models.protocol import SequenceModel, load_model, model_name, weights

WEIGHTS = "model.pt"
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or unreadable; the message names the path and the cause."""


def save_checkpoint(directory: str | Path, model: SequenceModel, space: ItemSpace, extra: dict | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = weights(model)
    state["__item_ids__"] = torch.from_numpy(np.array(space.item_ids, dtype=np.int64))
    torch.save(state, d / WEIGHTS)
    meta = {"params": model.p.to_dict(), "categories": list(space.categories), **(extra or {}),
            "model": model_name(model)}
    (d / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return d


def load_checkpoint(directory: str | Path) -> tuple[SequenceModel, ItemSpace, dict]:
    """The model (eval mode, CPU), its item space and the JSON metadata; :class:`CheckpointError` if unusable."""
    d = Path(directory)
    for name in (META, WEIGHTS):
        if not (d / name).is_file():
            raise CheckpointError(f"checkpoint {d} is incomplete: {name} is missing")
    try:
        meta = json.loads((d / META).read_text())
        state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        item_ids = state.pop("__item_ids__").numpy().astype(np.int64)
        model = load_model(meta.get("model", "sasrec"), meta["params"], state)
        text, has_text, item_category = model.side_info()
    except Exception as e:  # truncated file, bad JSON, wrong tensors: all mean "cannot use this checkpoint"
        raise CheckpointError(f"checkpoint {d} is unreadable: {type(e).__name__}: {e}") from e
    space = ItemSpace(
        item_ids=item_ids,
        text=text,
        has_text=has_text,
        item_category=item_category,
        categories=list(meta["categories"]),
    )
    return model, space, meta
