"""The plain first-order item Markov chain, a peer of the driftrec systems in ``driftrec evaluate`` (issue 19).

From the training events only, every consecutive pair ``j -> i`` of a user's time-ordered history (ties by event
id) is counted, with no gap cut and no decay. A user's score for item ``i`` is ``C(last -> i) / C(last -> *)``, the
row of the user's last training item. Items in the user's training history are excluded (as every baseline does);
ties, and users whose last item has no successors, fall back to popularity (event count, then item id), so each user
gets ``k`` items while unseen items remain.

The chain's columns are the training items in popularity order, so "ties by popularity" is "ties by lower column":
one exact, vectorised top-k (:func:`top_k_by_column`). numpy / pandas only: the Spark baseline
(:func:`driftrec.evaluation.baselines.markov_item_recommendations`) counts pairs in Spark and scores users with
:func:`recommend` in ``mapInPandas``; :func:`transition_counts` is the pandas twin of its counting, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftrec.migration.kernels import csr_lookup

CELLS_PER_BLOCK = 1 << 22  # users x items per dense score block (32 MiB of float64)


@dataclass(frozen=True)
class ItemChain:
    """Transition probabilities as CSR over columns; column ``c`` is ``item_ids[c]``, most popular first."""

    item_ids: np.ndarray  # (n,) int64, popularity order (event count desc, item id asc)
    popularity: np.ndarray  # (n,) event counts, non-increasing
    indptr: np.ndarray  # (n + 1,): successors of column j are indices[indptr[j]:indptr[j+1]], ascending
    indices: np.ndarray
    probs: np.ndarray  # C(j -> i) / C(j -> *); each non-empty row sums to 1


def transition_counts(events: pd.DataFrame) -> pd.DataFrame:
    """``(prev_item, item_id, count)``: consecutive pairs in each user's history ordered by ``(event_ts, event_id)``."""
    ordered = events.sort_values(["user_id", "event_ts", "event_id"], kind="stable")
    prev = ordered.groupby("user_id", sort=False)["item_id"].shift(1)
    pairs = pd.DataFrame({"prev_item": prev, "item_id": ordered["item_id"]}).dropna()
    counts = pairs.astype("int64").groupby(["prev_item", "item_id"]).size().rename("count").reset_index()
    return counts.astype({"count": "int64"})


def chain(transitions: pd.DataFrame, popularity: pd.DataFrame) -> ItemChain:
    """The chain from ``transitions(prev_item, item_id, count)`` and ``popularity(item_id, count)`` (training events).

    Every item of ``transitions`` must have a popularity row (both come from the same events)."""
    pop = popularity.sort_values(["count", "item_id"], ascending=[False, True], kind="stable")
    item_ids = pop["item_id"].to_numpy(np.int64)
    index = pd.Index(item_ids)
    if not index.is_unique:
        raise ValueError("popularity has more than one row for an item")
    n = len(item_ids)
    rows = index.get_indexer(transitions["prev_item"].to_numpy(np.int64))
    cols = index.get_indexer(transitions["item_id"].to_numpy(np.int64))
    if (rows < 0).any() or (cols < 0).any():
        raise ValueError("transitions name items without popularity: both must come from the same events")
    counts = transitions["count"].to_numpy(np.float64)
    order = np.lexsort((cols, rows))
    rows, cols, counts = rows[order], cols[order], counts[order]
    indptr = np.zeros(n + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    indptr = np.cumsum(indptr)
    totals = np.bincount(rows, weights=counts, minlength=n)
    probs = counts / totals[rows] if len(rows) else counts
    return ItemChain(item_ids, pop["count"].to_numpy(np.int64), indptr, cols, probs)


def fit(events: pd.DataFrame) -> ItemChain:
    """The chain of ``events(user_id, item_id, event_ts, event_id)`` in pandas (tests; Spark counts in the job)."""
    popularity = events.groupby("item_id").size().rename("count").reset_index()
    return chain(transition_counts(events), popularity)


def top_k_by_column(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cols, values)``, each (B, min(k, n)): the best ``k`` per row, best first, ties by lower column.

    Exact and without a per-row loop: every score above the row's k-th value is in, and of those equal to it the
    lowest columns fill the rest. ``-inf`` may be chosen only when a row has fewer than ``k`` finite scores."""
    b, n = scores.shape
    kk = min(k, n)
    if kk == 0:
        return np.zeros((b, 0), np.int64), np.zeros((b, 0))
    kth = np.partition(scores, n - kk, axis=1)[:, n - kk][:, None]
    above = scores > kth
    equal = scores == kth
    room = kk - above.sum(axis=1, keepdims=True)
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))
    row, col = np.nonzero(chosen)  # exactly kk per row
    vals = scores[row, col]
    order = np.lexsort((col, -vals, row))
    cols = col[order].reshape(b, kk)
    return cols, vals[order].reshape(b, kk)


def scores(model: ItemChain, last_items: np.ndarray, consumed: list) -> np.ndarray:
    """(B, n): each user's successor probabilities from their last item (-1 or unknown: zeros), consumed -inf."""
    index = pd.Index(model.item_ids)
    last = index.get_indexer(np.asarray(last_items, dtype=np.int64))
    s = csr_lookup(model.indptr, model.indices, model.probs, last, n=len(model.item_ids))
    seen = [np.asarray([] if c is None else c, dtype=np.int64) for c in consumed]
    lengths = np.array([len(c) for c in seen], dtype=np.int64)
    if lengths.sum():
        cols = index.get_indexer(np.concatenate(seen))
        owner = np.repeat(np.arange(len(seen)), lengths)
        s[owner[cols >= 0], cols[cols >= 0]] = -np.inf
    return s


def recommend(model: ItemChain, users: pd.DataFrame, k: int) -> pd.DataFrame:
    """``users(user_id, last_item, consumed)`` -> ``(user_id, rank, item_id, score)``, the top ``k`` per user.

    ``last_item`` null (no history): popularity only. ``score`` is the transition probability (0 for fallback
    items); rank order is score, then popularity, then item id. Users are scored in dense blocks of
    ``CELLS_PER_BLOCK`` cells."""
    n = len(model.item_ids)
    block = max(1, CELLS_PER_BLOCK // max(n, 1))
    out = []
    for start in range(0, len(users), block):
        part = users.iloc[start : start + block]
        last = pd.array(part["last_item"], dtype="Int64").fillna(-1).to_numpy(np.int64)
        s = scores(model, last, list(part["consumed"]))
        cols, vals = top_k_by_column(s, k)
        kk = cols.shape[1]
        frame = pd.DataFrame({
            "user_id": np.repeat(part["user_id"].to_numpy(np.int64), kk),
            "rank": np.tile(np.arange(1, kk + 1, dtype=np.int32), len(part)),
            "item_id": model.item_ids[cols].ravel() if n else np.zeros(0, np.int64),
            "score": vals.ravel(),
        })
        out.append(frame[np.isfinite(frame["score"].to_numpy())])
    if not out:
        return pd.DataFrame({"user_id": np.zeros(0, np.int64), "rank": np.zeros(0, np.int32),
                             "item_id": np.zeros(0, np.int64), "score": np.zeros(0)})
    return pd.concat(out, ignore_index=True)
