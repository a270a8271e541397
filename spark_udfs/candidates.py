"""The candidate step for large catalogues: a few hundred to a few thousand items per user instead of all of them.

Above ``topk.candidate_threshold`` items, scoring the whole catalogue per user costs ``O(users x items)``; the scorer
then ranks only the union of

* the successors of the user's recent items (``item_transitions``: what people went on to next),
* the top items of the user's strongest and rising categories (``P(i | c)``, the migration engine's category term),
* the nearest neighbours of the user's recent items in the model's item space (cosine of the item vectors, which
  start from the text embeddings, so a new item without events can be a neighbour),
* the globally most popular items (so every user, cold ones too, has a floor of candidates).

The first two are exactly where the migration score is non-zero beyond the popularity floor, so the step loses
what the model alone would have pulled from elsewhere; ``candidate_recall`` measures that against full scoring.
The neighbour lists are computed exactly on the driver in blocks (``O(items^2 x d)``); past a few hundred thousand
items an approximate nearest-neighbour index belongs here instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    """Catalogue-sized lists the workers draw candidates from; all entries are item indices, ``-1`` = none."""

    category_top: np.ndarray  # (C, T): items by P(i | c), best first
    neighbours: np.ndarray  # (n, N): nearest items by cosine of the model's item vectors, nearest first
    popular: np.ndarray  # (P,): most popular items
    categories_per_user: int  # strongest categories of q taken per user (rising ones are added to these)


def category_top(pic: np.ndarray, per_category: int) -> np.ndarray:
    """(C, T) indices of each category's best items by ``P(i | c)`` (ties by index), ``-1`` past the category."""
    t = min(per_category, pic.shape[1])
    order = np.argsort(-pic, axis=1, kind="stable")[:, :t]
    return np.where(np.take_along_axis(pic, order, axis=1) > 0, order, -1)


def nearest_neighbours(vectors: np.ndarray, per_item: int, block: int = 2048) -> np.ndarray:
    """(n, N) indices of each row's nearest other rows by cosine similarity, computed exactly in row blocks."""
    import torch

    v = torch.nn.functional.normalize(torch.as_tensor(np.asarray(vectors, dtype=np.float32)), dim=1)
    n = v.shape[0]
    k = min(per_item, n - 1)
    out = np.full((n, max(k, 0)), -1, dtype=np.int64)
    if k <= 0:
        return out
    with torch.no_grad():
        for lo in range(0, n, block):
            sims = v[lo : lo + block] @ v.T
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + lo] = -float("inf")  # not its own neighbour
            out[lo : lo + block] = sims.topk(k, dim=1).indices.numpy()
    return out


def candidate_sets(cand: Candidates, q: np.ndarray, rise: np.ndarray, recent: list[np.ndarray],
                   succ_indptr: np.ndarray, succ_indices: np.ndarray, rising_margin: float, n: int) -> np.ndarray:
    """(B, M) each user's candidate item indices, ascending, padded with ``n`` (sorts last, never a real item).

    ``q``/``rise`` are (B, C) in the category order of ``cand.category_top``; ``recent[u]`` the user's recent item
    indices (known items only).
    """
    sets = []
    for u in range(len(recent)):
        cats = np.argsort(-q[u], kind="stable")[: cand.categories_per_user]
        cats = np.union1d(cats[q[u][cats] > 0], np.flatnonzero(rise[u] > rising_margin))
        parts = [cand.popular, cand.category_top[cats].ravel()]
        for r in recent[u]:
            parts.append(succ_indices[succ_indptr[r] : succ_indptr[r + 1]])
            parts.append(cand.neighbours[r])
        s = np.unique(np.concatenate(parts).astype(np.int64))
        sets.append(s[s >= 0])
    width = max((len(s) for s in sets), default=0)
    out = np.full((len(sets), max(width, 1)), n, dtype=np.int64)
    for u, s in enumerate(sets):
        out[u, : len(s)] = s
    return out
