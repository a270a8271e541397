"""The validation search's scoring inside Spark tasks (``mapInPandas``): every combination in one pass.

Each batch of validation users (the top-k job's user rows plus ``truth_item``) is laid out once, the parts every
combination shares are computed once (the successor rows of each recent slot, the category term, the model's
softmax), and each combination only re-weights them and ranks the held-out item (:func:`driftrec.tuning.truth_gains`).
A task yields one row per (segment, stage, combination): sums, never per-user rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from driftrec import tuning
from driftrec.migration import kernels
from spark_udfs.topk import (
    ScoringAssets,
    _has_history,
    blend_scores,
    build_model,
    migrating_flags,
    model_probabilities,
    recent_matrix,
)

SUMS_SCHEMA = "segment string, stage string, combo int, gain double, users long"


def _excluded(assets: ScoringAssets, pdf: pd.DataFrame, scores: np.ndarray) -> np.ndarray:
    """``scores`` with each user's consumed items at -inf (as the top-k job excludes them)."""
    out = scores.copy()
    for u, consumed in enumerate(pdf["consumed"]):
        if consumed is not None and len(consumed):
            pos = assets.index.get_indexer(np.asarray(consumed, dtype=np.int64))
            out[u, pos[pos >= 0]] = -np.inf
    return out


def _engine_parts(assets: ScoringAssets, pdf: pd.DataFrame):
    """``(slots, n_hist, category_term)``: successor rows per recent slot (L_max, B, n), usable history length,
    the category term (B, n). ``assets.recent_items`` is the grid's largest."""
    recent, n_recent = recent_matrix(assets, pdf)
    n = len(assets.item_ids)
    slots = kernels.successor_slots(recent, assets.succ_indptr, assets.succ_indices, assets.succ_probs, n)
    q = np.stack([np.asarray(x, dtype=np.float64) for x in pdf["q"]])
    return slots, n_recent.astype(np.int64), kernels.category_term(q, assets.pic)


def engine_score(slots, n_hist, category, combo: tuning.EngineCombo) -> np.ndarray:
    """The migration engine's ``p(u, i, t+1)`` under one engine combination, from :func:`_engine_parts`."""
    n_recent = np.minimum(n_hist, combo.recent_items)
    weights = kernels.recency_weights(n_recent, slots.shape[0], combo.recent_decay)
    item = kernels.item_term_from_slots(slots, weights)
    return kernels.migration_score(item, category, kernels.item_weight(n_recent > 0, combo.item_term_weight))


def _sums(segment: np.ndarray, stage: str, combo: int, gains: np.ndarray) -> list[tuple]:
    return [(s, stage, combo, float(gains[segment == s].sum()), int((segment == s).sum()))
            for s in (tuning.MIGRATING, tuning.STABLE) if (segment == s).any()]


def score_validation(assets: ScoringAssets, pdf: pd.DataFrame, stage: str, engines: list[tuning.EngineCombo],
                     blends: list[tuning.BlendCombo], k: int, defaults: tuple | None = None, model=None) -> pd.DataFrame:
    """One batch -> ``SUMS_SCHEMA`` rows.

    ``stage`` ``engine``: every engine combination, migration alone. ``blend``: the model blended with ``engines[0]``
    (the chosen engine) in every blend combination; with ``defaults = (engine, blend, blend_migrating, mode)`` also
    the configured pipeline, as stage ``default``.
    """
    if len(pdf) == 0:
        return pd.DataFrame(columns=[c.split()[0] for c in SUMS_SCHEMA.split(", ")])
    truth = assets.index.get_indexer(pdf["truth_item"].to_numpy(dtype=np.int64))
    migrating = migrating_flags(pdf)
    segment = np.where(migrating, tuning.MIGRATING, tuning.STABLE)
    slots, n_hist, category = _engine_parts(assets, pdf)
    rows: list[tuple] = []
    if stage == tuning.ENGINE:
        for i, combo in enumerate(engines):
            scores = _excluded(assets, pdf, engine_score(slots, n_hist, category, combo))
            rows += _sums(segment, stage, i, tuning.truth_gains(scores, truth, assets.item_ids, k))
    else:
        known = _has_history(pdf)
        model_p = np.zeros((len(pdf), len(assets.item_ids)))
        if known.any():
            model = model if model is not None else build_model(assets)
            model_p[known] = model_probabilities(model, assets, pdf[known].reset_index(drop=True))
        migration = engine_score(slots, n_hist, category, engines[0])
        for i, combo in enumerate(blends):
            w = np.where(known, combo.weight, 1.0)
            scores = _excluded(assets, pdf, blend_scores(model_p, migration, w, combo.mode))
            rows += _sums(segment, stage, i, tuning.truth_gains(scores, truth, assets.item_ids, k))
        if defaults is not None:
            engine, weight, weight_migrating, mode = defaults
            w = np.full(len(pdf), float(weight))
            if weight_migrating is not None:
                w[migrating] = weight_migrating
            w = np.where(known, w, 1.0)
            base = engine_score(slots, n_hist, category, engine)
            scores = _excluded(assets, pdf, blend_scores(model_p, base, w, mode))
            rows += _sums(segment, tuning.DEFAULT, 0, tuning.truth_gains(scores, truth, assets.item_ids, k))
    return pd.DataFrame(rows, columns=[c.split()[0] for c in SUMS_SCHEMA.split(", ")])


def validation_udf(assets_broadcast, stage: str, engines, blends, k: int, users_per_batch: int, defaults=None):
    """The ``mapInPandas`` function of one search stage."""

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        assets: ScoringAssets = assets_broadcast.value
        model = build_model(assets) if stage != tuning.ENGINE else None
        for pdf in frames:
            for start in range(0, len(pdf), users_per_batch):
                out = score_validation(assets, pdf.iloc[start : start + users_per_batch].reset_index(drop=True),
                                       stage, engines, blends, k, defaults, model)
                if len(out):
                    yield out

    return score_partition
