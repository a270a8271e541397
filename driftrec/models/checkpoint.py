"""Self-contained checkpoints of any :class:`~driftrec.models.protocol.SequenceModel`: tensors in ``model.pt``
(loaded with ``weights_only=True``), the rest JSON.

Nothing is ever unpickled: the weights file holds only tensors, and the item space's ids and category names that
give those rows their meaning are tensors or JSON too. ``meta.json`` names the model class (``model``; checkpoints
written before the protocol existed are SASRec).
"""

from __future__ import annotations

import json
import tempfile
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


def _download(location: str, into: Path) -> Path:
    """Copy a remote checkpoint's files (an object-store URI) into a local folder with pyarrow."""
    from pyarrow import fs

    from driftrec.lakehouse import Lakehouse

    filesystem, path = Lakehouse(location).filesystem(location)
    for name in (META, WEIGHTS):
        try:
            fs.copy_files(f"{path}/{name}", str(into / name), source_filesystem=filesystem,
                          destination_filesystem=fs.LocalFileSystem())
        except (FileNotFoundError, OSError):
            pass  # reported below as an incomplete checkpoint
    return into


def load_checkpoint(directory: str | Path) -> tuple[SequenceModel, ItemSpace, dict]:
    """The model (eval mode, CPU), its item space and the JSON metadata; :class:`CheckpointError` if unusable.

    ``directory`` is a local path, a ``file://`` URI, or an object-store URI (fetched to a temp folder first).
    """
    from driftrec.lakehouse import Lakehouse

    location = str(directory)
    lake = Lakehouse(location)
    if lake.is_local:
        return _load(lake.local_path())
    with tempfile.TemporaryDirectory(prefix="driftrec-ckpt-") as tmp:
        return _load(_download(location, Path(tmp)), shown=location)


def _load(d: Path, shown: str | None = None) -> tuple[SequenceModel, ItemSpace, dict]:
    shown = shown or str(d)
    for name in (META, WEIGHTS):
        if not (d / name).is_file():
            raise CheckpointError(f"checkpoint {shown} is incomplete: {name} is missing")
    try:
        meta = json.loads((d / META).read_text())
        state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        item_ids = state.pop("__item_ids__").numpy().astype(np.int64)
        model = load_model(meta.get("model", "sasrec"), meta["params"], state)
        text, has_text, item_category = model.side_info()
    except Exception as e:  # truncated file, bad JSON, wrong tensors: all mean "cannot use this checkpoint"
        raise CheckpointError(f"checkpoint {shown} is unreadable: {type(e).__name__}: {e}") from e
    space = ItemSpace(
        item_ids=item_ids,
        text=text,
        has_text=has_text,
        item_category=item_category,
        categories=list(meta["categories"]),
    )
    return model, space, meta
