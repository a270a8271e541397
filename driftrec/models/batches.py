"""Rows of ``training_sequences`` (pandas) -> model tensors, and the item space a model is trained over.

Plain numpy/pandas, shared by the Ray workers (training) and the driver (validation), so both see exactly the same
item indices and padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def pad_left(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """Keep the last ``length`` entries of each sequence, left-padded with 0, as an (n, length) int64 array."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-length:]
        if len(s):
            out[i, length - len(s) :] = s
    return out


@dataclass
class ItemSpace:
    """The catalogue a model scores: item i (1-based index) is ``item_ids[i - 1]``."""

    item_ids: np.ndarray  # (n,) int64
    text: np.ndarray  # (n, text_dim) float32; zero rows where has_text == 0
    has_text: np.ndarray  # (n,) float32 0/1
    item_category: np.ndarray  # (n,) int64, 0 = none, else 1 + index into categories
    categories: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    def index(self) -> pd.Index:
        return pd.Index(self.item_ids)

    def category_index(self) -> dict[str, int]:
        return {c: i + 1 for i, c in enumerate(self.categories)}


def extend_space(old_item_ids: np.ndarray, old_categories: list[str], items: pd.DataFrame, text_dim: int) -> ItemSpace:
    """The item space of tonight's catalogue, keeping a previous model's item and category order as a prefix.

    ``items``: item_id, category (str or None), embedding (array or None). New items and categories are appended
    in id / name order, so a warm-started model keeps every learned row where it was.
    """
    items = items.drop_duplicates("item_id").set_index("item_id")
    old_ids = np.asarray(old_item_ids, dtype=np.int64)
    new_ids = np.setdiff1d(items.index.to_numpy(dtype=np.int64), old_ids)  # sorted
    item_ids = np.concatenate([old_ids, new_ids])
    cats = items["category"].dropna()
    categories = list(old_categories) + sorted(set(cats) - set(old_categories))
    cindex = {c: i + 1 for i, c in enumerate(categories)}
    aligned = items.reindex(item_ids)
    item_category = np.array([cindex.get(c, 0) if isinstance(c, str) else 0 for c in aligned["category"]], np.int64)
    text = np.zeros((len(item_ids), text_dim), np.float32)
    has_text = np.zeros(len(item_ids), np.float32)
    for i, e in enumerate(aligned["embedding"]):
        if e is not None and not (isinstance(e, float) and np.isnan(e)) and len(e) == text_dim:
            text[i] = np.asarray(e, np.float32)
            has_text[i] = 1.0
    return ItemSpace(item_ids, text, has_text, item_category, categories)


def interest_matrix(cats_col, p_col, cindex: dict[str, int], n_categories: int) -> np.ndarray:
    """(B, n_categories + 1) float32 interest vectors; unknown categories dropped, rows renormalised."""
    out = np.zeros((len(cats_col), n_categories + 1), np.float32)
    for i, (cats, ps) in enumerate(zip(cats_col, p_col, strict=True)):
        if cats is None:
            continue
        for c, p in zip(cats, ps, strict=True):
            j = cindex.get(c)
            if j is not None:
                out[i, j] += float(p)
    s = out.sum(1, keepdims=True)
    return np.divide(out, s, out=np.zeros_like(out), where=s > 0)


def _indices(item_ids_col, index: pd.Index) -> list[np.ndarray]:
    """Each sequence's 1-based item indices (unknown -> 0), from one lookup for the whole batch: a lookup per
    sequence cost more than the model's step on small catalogues."""
    seqs = [np.asarray(s, dtype=np.int64) for s in item_ids_col]
    if not seqs:
        return []
    flat = index.get_indexer(np.concatenate(seqs)) + 1
    return np.split(flat, np.cumsum([len(s) for s in seqs[:-1]]))


def train_batch(pdf: pd.DataFrame, index: pd.Index, cindex: dict[str, int], n_categories: int, max_len: int,
                window_start: int = 0) -> dict[str, np.ndarray]:
    """Next-item targets at every position; loss weight 1 where the target happened at/after ``window_start``."""
    idx = _indices(pdf["item_ids"], index)
    ts = [np.asarray(t, dtype=np.int64) for t in pdf["event_ts"]]
    seq = pad_left([s[:-1] for s in idx], max_len)
    target = pad_left([s[1:] for s in idx], max_len)
    recent = pad_left([(t[1:] >= window_start).astype(np.int64) for t in ts], max_len)
    weight = ((target > 0) & (seq > 0) & (recent > 0)).astype(np.float32)
    interest = interest_matrix(pdf["interest_categories"], pdf["interest_p"], cindex, n_categories)
    return {"seq": seq, "target": target, "weight": weight, "interest": interest}


def valid_batch(pdf: pd.DataFrame, index: pd.Index, cindex: dict[str, int], n_categories: int,
                max_len: int) -> dict[str, np.ndarray]:
    """The history before each user's held-out last item, and that item (0 when it is not in the space)."""
    idx = _indices(pdf["item_ids"], index)
    seq = pad_left([s[:-1] for s in idx], max_len)
    target = np.array([s[-1] for s in idx], dtype=np.int64)
    interest = interest_matrix(pdf["interest_categories"], pdf["interest_p"], cindex, n_categories)
    return {"seq": seq, "target": target, "interest": interest}
