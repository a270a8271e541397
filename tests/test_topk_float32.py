"""The full-catalogue scorer in float32 (``spark_udfs.topk.full_scores``) against the float64 formula it rearranges.

No Spark: the scorer is a pure function of the assets and one batch of users, so every blend mode, the gate, cold
users and exclusions are checked directly against :func:`score_parts` + :func:`blend_scores` + :func:`top_k`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from driftrec.migration import kernels
from spark_udfs.topk import (
    _exclude_consumed,
    blend_scores,
    build_model,
    score_batch,
    score_parts,
    top_k,
    top_k_rows,
    user_weights,
)
from tests.test_tuning import _scoring_case


def test_top_k_rows_equals_top_k_on_ties_and_exclusions():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        b, n = int(rng.integers(1, 9)), int(rng.integers(1, 40))
        k = int(rng.integers(1, n + 3))
        scores = (rng.integers(0, 5, size=(b, n)) / 4.0).astype(np.float32)  # few distinct values: ties at the cut
        scores[rng.random((b, n)) < 0.3] = -np.inf
        item_ids = rng.permutation(1000)[:n].astype(np.int64)  # id order is not column order
        got = top_k_rows(torch.from_numpy(scores), item_ids, k)
        np.testing.assert_array_equal(got, top_k(scores, item_ids, k), err_msg=f"seed {seed}")


def test_item_term_entries_sum_to_the_dense_item_term():
    rng = np.random.default_rng(3)
    n, b, slots = 30, 12, 4
    indptr, indices, probs = [0], [], []
    for _ in range(n):
        succ = np.sort(rng.choice(n, size=int(rng.integers(0, 6)), replace=False))
        indices += list(succ)
        probs += list(rng.dirichlet(np.ones(len(succ)))) if len(succ) else []
        indptr.append(len(indices))
    indptr, indices, probs = np.array(indptr), np.array(indices, np.int64), np.array(probs)
    recent = rng.integers(-1, n, size=(b, slots))
    recent[0, 1] = recent[0, 0]  # the same item twice: its entries add up
    n_recent = rng.integers(0, slots + 1, size=b).astype(np.float64)
    for decay in (1.0, 0.5):
        rows, cols, vals = kernels.item_term_entries(recent, n_recent, indptr, indices, probs, decay)
        dense = np.zeros((b, n))
        np.add.at(dense, (rows, cols), vals)
        want = kernels.item_term(recent, n_recent, indptr, indices, probs, n, decay=decay)
        assert want.any()
        np.testing.assert_allclose(dense, want, rtol=1e-12, atol=1e-15)


def _float64_rows(assets, users, model):
    """The float64 path: every part as a dense matrix, :func:`blend_scores`, consumed items out, :func:`top_k`."""
    _, _, _, migration, model_p, known = score_parts(assets, users, model)
    score = blend_scores(model_p, migration, user_weights(assets, users, known), assets.blend_mode)
    _exclude_consumed(assets, users, score, None)
    best = top_k(score, assets.item_ids, assets.k)
    pick = lambda m: np.take_along_axis(m, np.maximum(best, 0), axis=1)  # noqa: E731
    return best, pick(score), pick(model_p), pick(migration)


@pytest.mark.parametrize("settings", [
    dict(blend=0.5, blend_mode="linear"),
    dict(blend=0.3, blend_migrating=0.9, blend_mode="linear"),
    dict(blend=0.4, blend_migrating=0.1, blend_mode="log"),
    dict(blend=0.0, blend_mode="linear"),
    dict(blend=1.0, blend_mode="log"),
    dict(blend=0.7, blend_mode="log", recent_decay=0.5, recent_items=2),
])
def test_float32_scorer_ranks_and_scores_as_the_float64_formula(settings):
    assets, users = _scoring_case()
    assets = dataclasses.replace(assets, **settings, k=6)
    users = users.drop(columns="truth_item")
    model = build_model(assets)
    best, score, model_p, migration = _float64_rows(assets, users, model)
    got = score_batch(assets, users, model, candidates=False)
    valid = best >= 0
    assert len(got) == valid.sum() > 0
    want_ids = assets.item_ids[best[valid]]
    np.testing.assert_array_equal(got["item_id"].to_numpy(), want_ids)  # same items, same order (ties by id)
    np.testing.assert_allclose(got["score"], score[valid], rtol=2e-6)
    np.testing.assert_allclose(got["model_score"], model_p[valid], rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(got["migration_score"], migration[valid], rtol=1e-12)
    # The scored set: everyone but the consumed items, cold users included.
    for u, consumed in zip(users["user_id"], users["consumed"], strict=True):
        if consumed is not None:
            assert not set(consumed) & set(got["item_id"][got["user_id"] == u])
