"""Full-catalogue ranking metrics: every item is scored, ties broken by item index (lower index ranks first)."""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column among all columns, ties favouring the lower column.

    ``scores`` (B, n); ``target`` (B,) column index, or -1 for a target outside the catalogue (rank = n).
    """
    n = scores.shape[1]
    rows = np.arange(len(target))
    safe = np.clip(target, 0, n - 1)
    t = scores[rows, safe][:, None]
    cols = np.arange(n)[None, :]
    better = (scores > t) | ((scores == t) & (cols < safe[:, None]))
    ranks = better.sum(1)
    return np.where(target >= 0, ranks, n)


def ndcg_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per row: 1 / log2(rank + 2) inside the top k, else 0."""
    if len(ranks) == 0:
        return float("nan")
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def hit_rate_at_k(ranks: np.ndarray, k: int = 10) -> float:
    return float((ranks < k).mean()) if len(ranks) else float("nan")


def popularity_scores(counts: np.ndarray, batch: int) -> np.ndarray:
    """The popularity baseline's score matrix: the same counts for every user."""
    return np.broadcast_to(np.asarray(counts, np.float64)[None, :], (batch, len(counts)))
