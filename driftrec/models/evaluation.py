"""Full-catalogue ranking metrics: every item is scored, ties broken by item index (lower index ranks first)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from driftrec.models.batches import ItemSpace, valid_batch

if TYPE_CHECKING:
    import pandas as pd

    from driftrec.models.protocol import SequenceModel


def target_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target column among all columns, ties favouring the lower column.

    ``scores`` (B, n); ``target`` (B,) column index, or -1 for a target outside the catalogue (rank = n). A NaN
    target score (a diverged model) also ranks n: no comparison with NaN is true, so it would otherwise rank first.
    """
    n = scores.shape[1]
    rows = np.arange(len(target))
    safe = np.clip(target, 0, n - 1)
    t = scores[rows, safe][:, None]
    cols = np.arange(n)[None, :]
    better = (scores > t) | ((scores == t) & (cols < safe[:, None]))
    ranks = better.sum(1)
    return np.where((target >= 0) & ~np.isnan(t[:, 0]), ranks, n)


def valid_ranks(model: SequenceModel, space: ItemSpace, valid: pd.DataFrame, batch: int = 256,
                device: object = None) -> np.ndarray:
    """0-based full-catalogue rank of each held-out item (ties by item index); n_items when out of catalogue.

    ``valid``: training_sequences rows of split 'valid' (each user's history and held-out last item). The model is
    put in eval mode and left there; ``device`` is where its weights live (None: CPU). The training loop scores its
    epochs with this and the training job gates the finished model with it, so both read the same numbers.
    """
    import torch

    model.eval()
    b = valid_batch(valid, space.index(), space.category_index(), len(space.categories), model.p.max_seq_len)
    ranks = []
    with torch.no_grad():
        for s in range(0, len(valid), batch):
            seq = torch.as_tensor(b["seq"][s : s + batch], device=device)
            interest = torch.as_tensor(b["interest"][s : s + batch], device=device)
            scores = model.score(seq, interest).float().cpu().numpy()
            ranks.append(target_ranks(scores, b["target"][s : s + batch] - 1))
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def ndcg_gains(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-row NDCG@k with one relevant item per row: 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def ndcg_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per row (:func:`ndcg_gains`)."""
    if len(ranks) == 0:
        return float("nan")
    return float(ndcg_gains(ranks, k).mean())


def hit_rate_at_k(ranks: np.ndarray, k: int = 10) -> float:
    return float((ranks < k).mean()) if len(ranks) else float("nan")


def popularity_scores(counts: np.ndarray, batch: int) -> np.ndarray:
    """The popularity baseline's score matrix: the same counts for every user."""
    return np.broadcast_to(np.asarray(counts, np.float64)[None, :], (batch, len(counts)))
