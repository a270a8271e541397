"""Top-k scoring of users against the whole catalogue inside Spark (``mapInPandas``), model blended with migration.

Per batch of users (one pandas frame of a partition) the scorer computes, as dense matrix products over the
catalogue:

* the model's next-item distribution ``softmax(SASRec scores)`` from the user's recent items and interest state;
* the migration engine's ``p(u, i, t+1) = w * item_term + (1 - w) * category_term`` (as in
  :func:`driftrec.migration.scoring.markov_scores`): ``item_term`` is the mean successor probability from the last
  ``recent_items`` items (a sparse row gather), ``category_term = q_u @ P(i|c)`` (one matrix product);
* ``score = (1 - blend) * model + blend * migration``; consumed items are excluded; the top k are kept with ties
  broken by item id, so a rerun over the same inputs writes the same rows. A user without history (cold start)
  gets migration only: popularity inside the categories their ``q`` names (declared, or everyone's).

Nothing per user passes through the driver: the catalogue-sized assets are broadcast once, and each Python worker
builds the model from them once and keeps it for every later batch and task.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

OUTPUT_SCHEMA = (
    "user_id bigint, rank int, item_id bigint, score double, model_score double, migration_score double, "
    "via_item bigint, via_category string, reason_kind string"
)

# Reason kinds, turned into text by the job (which knows the titles).
SUCCESSOR, RISING, CATEGORY, POPULAR_IN, POPULAR = "successor", "rising", "category", "popular_in", "popular"


@dataclass
class ScoringAssets:
    """Everything a worker needs, aligned to the model's item index (item ``j`` = ``item_ids[j]``)."""

    token: str  # identifies the assets; a worker rebuilds its model only when this changes
    item_ids: np.ndarray  # (n,) int64
    model_state: bytes  # torch.save(state_dict): tensors only, loaded with weights_only=True
    model_params: dict
    model_categories: list[str]  # the model's interest-feature categories
    markov_categories: list[str]  # sorted; the order of ``pic`` rows and of each user's q / rise arrays
    pic: np.ndarray  # (C, n) float64: P(i | c)
    succ_indptr: np.ndarray  # CSR over item indices: successors of item j are indices[indptr[j]:indptr[j+1]]
    succ_indices: np.ndarray
    succ_probs: np.ndarray
    k: int
    blend: float  # weight of the migration score; 0 = model only, 1 = migration only
    item_term_weight: float
    recent_items: int
    rising_margin: float
    torch_threads: int = 1
    meta: dict = field(default_factory=dict)


_MODEL_CACHE: dict[str, object] = {}


def build_model(assets: ScoringAssets):
    """The SASRec of ``assets``, built once per Python worker process."""
    cached = _MODEL_CACHE.get(assets.token)
    if cached is not None:
        return cached
    import torch

    from driftrec.models.sasrec import SASRec, SASRecParams

    torch.set_num_threads(max(1, assets.torch_threads))
    model = SASRec(SASRecParams(**assets.model_params))
    model.load_state_dict(torch.load(io.BytesIO(assets.model_state), map_location="cpu", weights_only=True))
    model.eval()
    _MODEL_CACHE.clear()
    _MODEL_CACHE[assets.token] = model
    return model


def model_probabilities(model, assets: ScoringAssets, pdf: pd.DataFrame) -> np.ndarray:
    """(B, n) float64: softmax of the model's scores after each user's history."""
    import torch

    from driftrec.models.batches import interest_matrix
    from driftrec.models.sasrec import pad_left

    index = pd.Index(assets.item_ids)
    max_len = int(assets.model_params["max_seq_len"])
    seqs = [index.get_indexer(np.asarray(s, dtype=np.int64)) + 1 for s in pdf["item_ids"]]
    seq = pad_left([s[s > 0][-max_len:] for s in seqs], max_len)
    cindex = {c: i + 1 for i, c in enumerate(assets.model_categories)}
    interest = interest_matrix(pdf["interest_categories"], pdf["interest_p"], cindex,
                               int(assets.model_params["n_categories"]))
    with torch.no_grad():
        logits = model.score(torch.as_tensor(seq), torch.as_tensor(interest)).double()
        return torch.softmax(logits, dim=1).numpy()


def recent_indices(assets: ScoringAssets, items) -> np.ndarray:
    """The last ``recent_items`` items of a history, most recent first, as catalogue indices (-1 = unknown)."""
    last = np.asarray(items, dtype=np.int64)[-assets.recent_items :][::-1]
    return pd.Index(assets.item_ids).get_indexer(last)


def migration_terms(assets: ScoringAssets, pdf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(item_term, category_term, w)``: (B, n), (B, n), (B,)."""
    n = len(assets.item_ids)
    q = np.stack([np.asarray(x, dtype=np.float64) for x in pdf["q"]])
    cat_term = q @ assets.pic
    item_term = np.zeros((len(pdf), n))
    w = np.zeros(len(pdf))
    ptr, idx, prob = assets.succ_indptr, assets.succ_indices, assets.succ_probs
    for u, items in enumerate(pdf["item_ids"]):
        if items is None or len(items) == 0:
            continue
        w[u] = assets.item_term_weight
        recent = recent_indices(assets, items)
        for r in recent[recent >= 0]:
            lo, hi = ptr[r], ptr[r + 1]
            item_term[u, idx[lo:hi]] += prob[lo:hi]
        item_term[u] /= min(len(items), assets.recent_items)
    return item_term, cat_term, w


def top_k(scores: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first, ties by ascending item id (-inf never chosen)."""
    n = scores.shape[1]
    out = np.full((scores.shape[0], min(k, n)), -1, dtype=np.int64)
    for u, row in enumerate(scores):
        kk = min(k, n)
        kth = np.partition(row, n - kk)[n - kk]
        cand = np.flatnonzero(row >= kth)
        cand = cand[np.isfinite(row[cand])]
        order = cand[np.lexsort((item_ids[cand], -row[cand]))][:kk]
        out[u, : len(order)] = order
    return out


def _successor_prob(assets: ScoringAssets, r: int, j: int) -> float:
    lo, hi = assets.succ_indptr[r], assets.succ_indptr[r + 1]
    hit = np.flatnonzero(assets.succ_indices[lo:hi] == j)
    return float(assets.succ_probs[lo + hit[0]]) if len(hit) else 0.0


def score_batch(assets: ScoringAssets, pdf: pd.DataFrame, model=None) -> pd.DataFrame:
    """One batch of users -> their top-k rows (``OUTPUT_SCHEMA``)."""
    if len(pdf) == 0:
        return pd.DataFrame(columns=[c.split()[0] for c in OUTPUT_SCHEMA.split(", ")])
    item_term, cat_term, w = migration_terms(assets, pdf)
    migration = w[:, None] * item_term + (1.0 - w[:, None]) * cat_term
    # A user without history (cold start) has nothing for the model to read: migration only, i.e. popularity
    # inside their declared categories (or everyone's).
    known = np.array([x is not None and len(x) > 0 for x in pdf["item_ids"]])
    model_p = np.zeros_like(migration)
    if assets.blend < 1.0 and known.any():
        model = model if model is not None else build_model(assets)
        model_p[known] = model_probabilities(model, assets, pdf[known].reset_index(drop=True))
    blend = np.where(known, assets.blend, 1.0)[:, None]
    score = (1.0 - blend) * model_p + blend * migration
    index = pd.Index(assets.item_ids)
    for u, consumed in enumerate(pdf["consumed"]):
        if consumed is not None and len(consumed):
            pos = index.get_indexer(np.asarray(consumed, dtype=np.int64))
            score[u, pos[pos >= 0]] = -np.inf
    best = top_k(score, assets.item_ids, assets.k)

    rows = []
    cats = assets.markov_categories
    for u, (user_id, items, q, rise) in enumerate(zip(pdf["user_id"], pdf["item_ids"], pdf["q"], pdf["rise"],
                                                      strict=True)):
        recent = recent_indices(assets, items) if items is not None and len(items) else np.zeros(0, np.int64)
        q = np.asarray(q, dtype=np.float64)
        rise = np.asarray(rise, dtype=np.float64)
        for rank, j in enumerate(best[u], start=1):
            if j < 0:
                break
            # Strongest source item (ties: the more recent one) and strongest category (ties: by name).
            via_item, via_p = None, 0.0
            for r in recent[recent >= 0]:
                p = _successor_prob(assets, int(r), int(j))
                if p > via_p:
                    via_item, via_p = int(assets.item_ids[r]), p
            contrib = q * assets.pic[:, j]
            c = int(np.argmax(contrib)) if len(contrib) and contrib.max() > 0 else -1
            via_cat = cats[c] if c >= 0 else None
            if not known[u]:
                kind = POPULAR_IN if via_cat is not None else POPULAR
            elif via_item is not None and w[u] * item_term[u, j] >= (1.0 - w[u]) * cat_term[u, j]:
                kind = SUCCESSOR
            elif via_cat is not None and rise[c] > assets.rising_margin:
                kind = RISING
            elif via_cat is not None:
                kind = CATEGORY
            else:
                kind = POPULAR
            rows.append((int(user_id), rank, int(assets.item_ids[j]), float(score[u, j]), float(model_p[u, j]),
                         float(migration[u, j]), via_item, via_cat, kind))
    return pd.DataFrame(rows, columns=[c.split()[0] for c in OUTPUT_SCHEMA.split(", ")])


def topk_udf(assets_broadcast, users_per_batch: int):
    """The ``mapInPandas`` function: reads the broadcast assets once per worker, scores users in batches."""

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        assets: ScoringAssets = assets_broadcast.value
        model = build_model(assets) if assets.blend < 1.0 else None
        for pdf in frames:
            for start in range(0, len(pdf), users_per_batch):
                out = score_batch(assets, pdf.iloc[start : start + users_per_batch].reset_index(drop=True), model)
                if len(out):
                    yield out

    return score_partition
