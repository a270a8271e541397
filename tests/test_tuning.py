"""`driftrec tune`: the search's arithmetic against the top-k job's own ranking, its choice, and the job end to end.

The search is only worth anything if it ranks exactly as the nightly top-k does, so the numpy tests score the same
users through :func:`spark_udfs.tuning.score_validation` and :func:`spark_udfs.topk.score_batch` and compare NDCG;
the Spark test then recomputes the recorded validation NDCG through the real top-k job on the tuning lakehouse.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from driftrec import tuning
from driftrec.config import ConfigError, SyntheticConfig, TuningConfig
from driftrec.models.batches import extend_space
from driftrec.models.protocol import model_name, model_to_bytes
from spark_udfs.topk import ScoringAssets, blend_scores, build_model, score_batch, top_k, user_weights
from spark_udfs.tuning import score_validation
from tests.conftest import make_conf
from tests.test_model_protocol import _items, _trained  # importing registers the "mean" model

EC, BC = tuning.EngineCombo, tuning.BlendCombo


# --- truth_gains: the rank of the held-out item as the top-k job would give it ---------------------------------------


def _gains_via_top_k(scores: np.ndarray, truth: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """The reference: the top-k job's own list, then ``1 / log2(rank + 2)`` of the truth's 0-based position in it."""
    best = top_k(scores, item_ids, k)
    out = np.zeros(len(truth))
    for u, t in enumerate(truth):
        at = np.flatnonzero(best[u] == t) if t >= 0 else []
        if len(at):
            out[u] = 1.0 / np.log2(at[0] + 2.0)
    return out


def test_truth_gains_by_hand_ties_exclusions_and_the_cutoff():
    # Item ids are not in index order: a tie goes to the smaller item id, not the smaller column.
    item_ids = np.array([30, 10, 20, 40, 50])
    row = np.array([0.5, 0.9, 0.5, -np.inf, 0.1])
    # top-k order: col 1 (0.9), col 2 (0.5, id 20), col 0 (0.5, id 30), col 4 (0.1); col 3 never.
    truth = np.array([1, 2, 0, 4, 3, -1])
    scores = np.tile(row, (len(truth), 1))
    np.testing.assert_allclose(tuning.truth_gains(scores, truth, item_ids, 5),
                               [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5), 0.0, 0.0], rtol=0, atol=1e-15)
    # Rank k-1 (0-based) is the last hit; rank k is a miss.
    assert tuning.truth_gains(scores[2:3], truth[2:3], item_ids, 3)[0] == 0.5
    assert tuning.truth_gains(scores[2:3], truth[2:3], item_ids, 2)[0] == 0.0
    # An excluded (consumed) truth is a miss even when everything else is excluded too.
    assert tuning.truth_gains(np.full((1, 5), -np.inf), np.array([3]), item_ids, 5)[0] == 0.0
    for k in (1, 2, 3, 4, 5, 9):
        np.testing.assert_array_equal(tuning.truth_gains(scores, truth, item_ids, k),
                                      _gains_via_top_k(scores, truth, item_ids, k))


def test_truth_gains_match_the_top_k_list_on_random_matrices_with_ties():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        b, n = int(rng.integers(1, 8)), int(rng.integers(1, 16))
        k = int(rng.integers(1, n + 3))
        scores = rng.integers(0, 4, size=(b, n)) / 4.0  # few distinct values: many ties
        scores[rng.random((b, n)) < 0.25] = -np.inf
        item_ids = rng.permutation(1000)[:n].astype(np.int64)
        truth = rng.integers(-1, n, size=b)
        np.testing.assert_array_equal(tuning.truth_gains(scores, truth, item_ids, k),
                                      _gains_via_top_k(scores, truth, item_ids, k), err_msg=f"seed {seed}")


# --- grids, choice ----------------------------------------------------------------------------------------------------


def test_engine_grid_tries_one_decay_for_one_recent_item_and_blend_grid_is_modes_times_weights(tmp_path):
    conf = make_conf(tmp_path, "tuning.item_term_weights=[0.5, 1.0]", "tuning.recent_items=[3, 1, 3]",
                     "tuning.recent_decays=[0.5, 1.0, 0.25]")
    assert tuning.engine_grid(conf) == [
        EC(0.5, 1, 1.0), EC(0.5, 3, 0.5), EC(0.5, 3, 1.0), EC(0.5, 3, 0.25),
        EC(1.0, 1, 1.0), EC(1.0, 3, 0.5), EC(1.0, 3, 1.0), EC(1.0, 3, 0.25),
    ]
    # Without a decay of 1 in the grid, one recent item still gets its single (decay-free) row.
    only = make_conf(tmp_path, "tuning.item_term_weights=[0.7]", "tuning.recent_items=[1, 2]",
                     "tuning.recent_decays=[0.5]")
    assert tuning.engine_grid(only) == [EC(0.7, 1, 1.0), EC(0.7, 2, 0.5)]
    default = make_conf(tmp_path)
    t = default.tuning
    n_multi = sum(1 for n in set(t.recent_items) if n > 1)
    assert len(tuning.engine_grid(default)) == len(t.item_term_weights) * (1 + n_multi * len(t.recent_decays))
    assert len(tuning.blend_grid(default)) == 2 * 11
    assert tuning.blend_grid(default)[:2] == [BC("linear", 0.0), BC("linear", 0.1)]
    assert tuning.blend_grid(default)[11] == BC("log", 0.0)
    dup = make_conf(tmp_path, "tuning.blend_modes=['log', 'log']", "tuning.blend_weights=[0.2, 0.8]")
    assert tuning.blend_grid(dup) == [BC("log", 0.2), BC("log", 0.8)]
    assert tuning.default_engine(default) == EC(default.migration.item_term_weight, default.migration.recent_items,
                                                default.migration.recent_decay)


BLENDS = [BC("linear", 0.0), BC("linear", 0.5), BC("linear", 1.0), BC("log", 0.0), BC("log", 0.5), BC("log", 1.0)]


def _sums(gains: dict[str, list[float]], users: dict[str, int]) -> pd.DataFrame:
    """The blend stage's rows as two tasks would return them: each (segment, combo) split over two rows."""
    rows = []
    for seg, per_combo in gains.items():
        first = users[seg] // 2
        for combo, g in enumerate(per_combo):
            rows += [(seg, tuning.BLEND, combo, 0.25 * g, first),
                     (seg, tuning.BLEND, combo, 0.75 * g, users[seg] - first)]
    return pd.DataFrame(rows, columns=["segment", "stage", "combo", "gain", "users"])


# Migrating users (3) do best migration-only, stable users (5) model-only; overall the linear 0.5 wins.
GATED = {"migrating": [0.3, 1.0, 2.0, 0.2, 0.5, 1.5], "stable": [2.0, 1.8, 0.5, 1.0, 1.2, 0.4]}
USERS = {"migrating": 3, "stable": 5}


def test_choose_gives_migrating_users_their_own_weight_when_it_wins(tmp_path):
    conf = make_conf(tmp_path, "tuning.min_segment_users=3")
    chosen, ndcg, search = tuning.choose(_sums(GATED, USERS), conf, BLENDS)
    assert chosen == {"blend_mode": "linear", "blend_weight": 0.0, "blend_weight_migrating": 1.0}
    assert ndcg == pytest.approx((2.0 + 2.0) / 8, abs=1e-12)
    assert [(s["stage"], s["mode"], s["blend_weight"]) for s in search] == [("blend", c.mode, c.weight) for c in BLENDS]
    for i, s in enumerate(search):
        assert s["ndcg"] == pytest.approx((GATED["migrating"][i] + GATED["stable"][i]) / 8, abs=1e-12)
        assert s["ndcg_migrating"] == pytest.approx(GATED["migrating"][i] / 3, abs=1e-12)
        assert s["ndcg_stable"] == pytest.approx(GATED["stable"][i] / 5, abs=1e-12)
        assert (s["users_migrating"], s["users_stable"]) == (3, 5)


def test_choose_serves_the_overall_weight_to_a_segment_too_small_or_when_the_gate_is_off(tmp_path):
    for extra in ("tuning.min_segment_users=4", "tuning.gate_by_drift=false"):
        chosen, ndcg, _ = tuning.choose(_sums(GATED, USERS), make_conf(tmp_path, "tuning.min_segment_users=3", extra),
                                        BLENDS)
        assert chosen == {"blend_mode": "linear", "blend_weight": 0.5, "blend_weight_migrating": None}, extra
        assert ndcg == pytest.approx((1.0 + 1.8) / 8, abs=1e-12)
    # No stable users at all: nothing to gate against.
    only = {"migrating": GATED["migrating"]}
    chosen, ndcg, _ = tuning.choose(_sums(only, USERS), make_conf(tmp_path, "tuning.min_segment_users=1"), BLENDS)
    assert chosen == {"blend_mode": "linear", "blend_weight": 1.0, "blend_weight_migrating": None}
    assert ndcg == pytest.approx(2.0 / 3, abs=1e-12)


def test_choose_picks_the_mode_with_the_higher_total_and_ties_to_the_earlier_weight(tmp_path):
    conf = make_conf(tmp_path, "tuning.gate_by_drift=false")
    log_wins = {"migrating": [0.3, 1.0, 2.0, 0.2, 1.5, 1.5], "stable": [2.0, 1.8, 0.5, 1.0, 1.7, 1.7]}
    chosen, ndcg, _ = tuning.choose(_sums(log_wins, USERS), conf, BLENDS)
    # log 0.5 and log 1.0 tie at 3.2 (> linear's 2.8): the earlier weight.
    assert chosen == {"blend_mode": "log", "blend_weight": 0.5, "blend_weight_migrating": None}
    assert ndcg == pytest.approx(3.2 / 8, abs=1e-12)
    # A tie between modes keeps the first mode of the grid.
    even = {"migrating": [0.3, 1.0, 2.0, 0.3, 1.0, 2.0], "stable": [2.0, 1.8, 0.5, 2.0, 1.8, 0.5]}
    chosen, _, _ = tuning.choose(_sums(even, USERS), conf, BLENDS)
    assert chosen["blend_mode"] == "linear" and chosen["blend_weight"] == 0.5
    # The gate is weighed per mode: here only the log mode's segment weights beat the overall best.
    gated_log = {"migrating": [0.3, 1.0, 1.1, 0.2, 0.1, 2.5], "stable": [2.0, 1.8, 0.5, 2.2, 1.2, 0.1]}
    chosen, ndcg, _ = tuning.choose(_sums(gated_log, USERS), make_conf(tmp_path, "tuning.min_segment_users=3"), BLENDS)
    assert chosen == {"blend_mode": "log", "blend_weight": 0.0, "blend_weight_migrating": 1.0}
    assert ndcg == pytest.approx((2.5 + 2.2) / 8, abs=1e-12)


def test_best_engine_picks_the_highest_total_and_ties_to_the_earlier_combination():
    engines = [EC(0.3, 1, 1.0), EC(0.5, 3, 0.5), EC(0.7, 3, 0.5)]
    rows = [("migrating", "engine", 0, 0.5, 4), ("stable", "engine", 0, 1.0, 6),
            ("migrating", "engine", 1, 1.5, 4), ("stable", "engine", 1, 1.0, 6),
            ("migrating", "engine", 2, 1.0, 4), ("stable", "engine", 2, 1.5, 6)]
    sums = pd.DataFrame(rows, columns=["segment", "stage", "combo", "gain", "users"])
    best, search = tuning.best_engine(sums, engines)
    assert best == engines[1]
    assert [s["ndcg"] for s in search] == pytest.approx([0.15, 0.25, 0.25], abs=1e-12)
    assert search[2] == {"stage": "engine", "item_term_weight": 0.7, "recent_items": 3, "recent_decay": 0.5,
                         "ndcg": pytest.approx(0.25)}
    sums.loc[sums["combo"] == 2, "gain"] += 0.01
    assert tuning.best_engine(sums, engines)[0] == engines[2]


# --- the blend -------------------------------------------------------------------------------------------------------


def test_blend_scores_linear_and_log_formulas_and_their_ends():
    rng = np.random.default_rng(3)
    model = rng.dirichlet(np.ones(30), size=4)
    migration = rng.dirichlet(np.ones(30), size=4)
    w = np.array([0.0, 0.3, 0.8, 1.0])
    np.testing.assert_array_equal(blend_scores(model, migration, w, "linear"),
                                  (1 - w)[:, None] * model + w[:, None] * migration)
    np.testing.assert_allclose(blend_scores(model, migration, w, "log"),
                               model ** (1 - w)[:, None] * migration ** w[:, None], rtol=1e-12)
    for mode in ("linear", "log"):
        s = blend_scores(model, migration, w, mode)
        assert (np.argsort(-s[0], kind="stable") == np.argsort(-model[0], kind="stable")).all(), mode
        assert (np.argsort(-s[3], kind="stable") == np.argsort(-migration[3], kind="stable")).all(), mode
    # A product of experts: an item one distribution rules out (0) ranks below every item both allow.
    migration[1, :5] = 0.0
    s = blend_scores(model, migration, w, "log")[1]
    assert s[:5].max() < s[5:].min() and np.isfinite(s).all()
    with pytest.raises(ValueError, match="unknown blend mode 'max'"):
        blend_scores(model, migration, w, "max")


def _assets(**kw) -> ScoringAssets:
    n = 3
    base = dict(token="tuning-weights", item_ids=np.arange(n), model_state=b"", model_params={}, model_categories=[],
                markov_categories=["a"], pic=np.full((1, n), 1 / n), succ_indptr=np.zeros(n + 1, np.int64),
                succ_indices=np.zeros(0, np.int64), succ_probs=np.zeros(0), k=2, blend=0.4, item_term_weight=0.5,
                recent_items=3, rising_margin=0.05)
    return ScoringAssets(**{**base, **kw})


def test_user_weights_give_migrating_users_the_gate_and_cold_users_migration_only():
    pdf = pd.DataFrame({"migrating": [True, False, None, True]})
    known = np.array([True, True, True, False])
    np.testing.assert_array_equal(user_weights(_assets(blend_migrating=0.9), pdf, known), [0.9, 0.4, 0.4, 1.0])
    np.testing.assert_array_equal(user_weights(_assets(), pdf, known), [0.4, 0.4, 0.4, 1.0])
    np.testing.assert_array_equal(user_weights(_assets(blend_migrating=0.9), pdf.drop(columns="migrating"), known),
                                  [0.4, 0.4, 0.4, 1.0])
    assert not _assets(blend=1.0).needs_model
    assert _assets(blend=1.0, blend_migrating=0.5).needs_model
    assert not _assets(blend=1.0, blend_migrating=1.0).needs_model
    assert _assets(blend=0.99).needs_model


# --- the search scores exactly as the top-k job ranks ----------------------------------------------------------------

TIED = [0, 1, 2]  # catalogue columns of items 107, 103, 101: no successor mass, equal and the largest P(i | c)


def _scoring_case(seed: int = 5):
    """Assets with a small trained MeanModel over a catalogue whose index order is not id order, and validation users
    covering: cold start, an unknown history item, a consumed truth, a truth outside the catalogue, and truths among
    items the engine ties exactly (ranked by id, the reverse of their column order)."""
    rng = np.random.default_rng(seed)
    space = extend_space(np.array([107, 103, 101], np.int64), [], _items(list(range(100, 112))), 4)
    m = _trained(space)
    n = space.n_items
    pic = rng.dirichlet(np.ones(n), size=2)
    pic[:, TIED] = 2 * pic.max(axis=1, keepdims=True)
    pic /= pic.sum(axis=1, keepdims=True)
    indptr, indices, probs = [0], [], []
    for j in range(n):
        succ = np.sort(rng.choice([c for c in range(n) if c != j and c not in TIED], size=4, replace=False))
        indices += list(succ)
        probs += list(rng.dirichlet(np.ones(4)))
        indptr.append(len(indices))
    assets = ScoringAssets(
        token=f"tuning-mean-{seed}", item_ids=space.item_ids, model_state=model_to_bytes(m),
        model_params=m.p.to_dict(), model_categories=list(space.categories), markov_categories=["a", "b"], pic=pic,
        succ_indptr=np.array(indptr, np.int64), succ_indices=np.array(indices, np.int64),
        succ_probs=np.array(probs), k=4, blend=0.5, item_term_weight=0.5, recent_items=5, rising_margin=0.05,
        model_name=model_name(m),
    )
    assert list(space.item_ids[TIED]) == [107, 103, 101]
    histories = [[100, 104, 102], [105], None, [106, 555, 109, 110], [111, 102, 100, 108, 106, 104, 101],
                 [107, 108], [102, 109], [110, 100, 105, 111], [101, 103, 106], [104, 105, 106, 107, 108]]
    truths = [101, 103, 107, 109, 102, 999, 107, 103, 104, 103]  # user 5's 102 is consumed, user 6's 999 unknown
    users = pd.DataFrame({
        "user_id": np.arange(1, len(histories) + 1, dtype=np.int64),
        "item_ids": histories,
        "consumed": [None if h is None else sorted(set(h)) for h in histories],
        "interest_categories": [["a", "b"]] * len(histories),
        "interest_p": [[0.5, 0.5]] * len(histories),
        "q": list(rng.dirichlet(np.ones(2), size=len(histories))),
        "rise": [[0.0, 0.0]] * len(histories),
        "migrating": [True, False, None, True, False, True, False, False, True, None],
        "truth_item": np.array(truths, dtype=np.int64),
    })
    return assets, users


def _ndcg_sums_of_top_k(assets: ScoringAssets, users: pd.DataFrame, model) -> dict[str, tuple[float, int]]:
    """``{segment: (gain, users)}`` from the top-k job's own rows: ``1 / log2(rank + 1)`` of the truth if listed."""
    rows = score_batch(assets, users.drop(columns="truth_item"), model, candidates=False)
    assert len(rows) > 0
    out: dict[str, tuple[float, int]] = {}
    for u in users.itertuples():
        got = rows[(rows["user_id"] == u.user_id) & (rows["item_id"] == u.truth_item)]["rank"].to_numpy()
        gain = 1.0 / math.log2(got[0] + 1.0) if len(got) else 0.0
        seg = tuning.MIGRATING if u.migrating is not None and bool(u.migrating) else tuning.STABLE
        g, c = out.get(seg, (0.0, 0))
        out[seg] = (g + gain, c + 1)
    return out


def _by_segment(sums: pd.DataFrame, stage: str, combo: int) -> dict[str, tuple[float, int]]:
    part = sums[(sums["stage"] == stage) & (sums["combo"] == combo)]
    assert part["segment"].is_unique
    return {r.segment: (r.gain, r.users) for r in part.itertuples()}


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), what
    for seg in want:
        assert got[seg][1] == want[seg][1], (what, seg)
        assert got[seg][0] == pytest.approx(want[seg][0], abs=1e-12), (what, seg)


def _served(assets: ScoringAssets, engine: tuning.EngineCombo, weight: float, weight_migrating, mode: str, k: int):
    """The assets the top-k job would build with these settings."""
    return dataclasses.replace(assets, k=k, blend=weight, blend_migrating=weight_migrating, blend_mode=mode,
                               item_term_weight=engine.item_term_weight, recent_items=engine.recent_items,
                               recent_decay=engine.recent_decay)


@pytest.mark.parametrize("defaults", [
    (EC(0.5, 3, 1.0), 0.6, None, "linear"),
    (EC(0.7, 2, 0.5), 0.3, 0.8, "log"),
    (EC(0.95, 5, 0.25), 0.0, 1.0, "linear"),
    (EC(0.3, 1, 1.0), 1.0, 0.2, "log"),
])
def test_the_default_stage_scores_exactly_as_the_top_k_job_ranks(defaults):
    assets, users = _scoring_case()
    model = build_model(assets)
    engine, weight, weight_migrating, mode = defaults
    k = 4
    chosen = EC(0.85, 3, 0.5)  # the blend stage's engine; the default stage has its own
    sums = score_validation(assets, users, tuning.BLEND, [chosen], BLENDS, k, defaults, model)
    assert set(sums["stage"]) == {tuning.BLEND, tuning.DEFAULT}
    want = _ndcg_sums_of_top_k(_served(assets, engine, weight, weight_migrating, mode, k), users, model)
    assert want[tuning.MIGRATING][1] == 4 and want[tuning.STABLE][1] == 6
    assert sum(g for g, _ in want.values()) > 0  # some truths rank inside the top k
    _assert_same(_by_segment(sums, tuning.DEFAULT, 0), want, f"default {defaults}")
    for i, combo in enumerate(BLENDS):  # every blend combination with the chosen engine, no gate
        want = _ndcg_sums_of_top_k(_served(assets, chosen, combo.weight, None, combo.mode, k), users, model)
        _assert_same(_by_segment(sums, tuning.BLEND, i), want, f"blend {combo}")


def test_the_engine_stage_scores_each_combination_as_the_top_k_job_with_migration_only():
    assets, users = _scoring_case(seed=8)
    engines = [EC(0.5, 3, 1.0), EC(1.0, 1, 1.0), EC(0.7, 5, 0.25), EC(0.3, 2, 0.5), EC(0.0, 3, 1.0)]
    k = 3
    sums = score_validation(assets, users, tuning.ENGINE, engines, BLENDS, k)
    assert set(sums["stage"]) == {tuning.ENGINE} and set(sums["combo"]) == set(range(len(engines)))
    hits = 0.0
    for i, combo in enumerate(engines):
        want = _ndcg_sums_of_top_k(_served(assets, combo, 1.0, None, "linear", k), users, None)
        _assert_same(_by_segment(sums, tuning.ENGINE, i), want, f"engine {combo}")
        hits += sum(g for g, _ in want.values())
    assert hits > 0
    # The premise of the tie cases: under the category term alone the tied columns score exactly alike.
    from driftrec.migration import kernels

    cat = kernels.category_term(np.stack(users["q"].to_numpy()), assets.pic)
    assert (cat[:, TIED] == cat[:, TIED[:1]]).all() and (cat[:, TIED[0]] > np.delete(cat, TIED, axis=1).max(1)).all()
    # Migration only on the category term: the tied items lead every list by id (101, 103, 107) unless consumed.
    # Users 1 (101), 2, 8 (103), 3, 7 (107) and 10 (103 after 101: 107 consumed) hit; 4, 5, 6 and 9 miss.
    ties = score_validation(assets, users, tuning.ENGINE, [EC(0.0, 3, 1.0)], BLENDS, 3)
    assert ties["gain"].sum() == pytest.approx(1.0 + 3 / math.log2(3) + 2 * 0.5, abs=1e-12)
    assert score_validation(assets, users.iloc[[]], tuning.ENGINE, engines, BLENDS, k).empty


# --- settings ---------------------------------------------------------------------------------------------------------


def test_with_settings_applies_sections_and_validates(tmp_path):
    conf = make_conf(tmp_path)
    settings = {"migration": {"item_term_weight": 0.85, "recent_items": 2, "recent_decay": 0.5},
                "topk": {"blend_mode": "log", "blend_weight": 0.3, "blend_weight_migrating": 0.9}}
    got = tuning.with_settings(conf, settings)
    assert (got.migration.item_term_weight, got.migration.recent_items, got.migration.recent_decay) == (0.85, 2, 0.5)
    assert (got.topk.blend_mode, got.topk.blend_weight, got.topk.blend_weight_migrating) == ("log", 0.3, 0.9)
    assert got.topk.k == conf.topk.k and got.migration.gap_minutes == conf.migration.gap_minutes  # the rest untouched
    assert got.lakehouse == conf.lakehouse
    assert (conf.topk.blend_mode, conf.topk.blend_weight, conf.migration.recent_items) == ("linear", 0.6, 3)
    assert tuning.with_settings(conf, {}) == conf
    for bad in ({"topk": {"blend_weight": 1.5}}, {"migration": {"recent_decay": 0.0}},
                {"topk": {"blend_mode": "geometric"}}, {"topk": {"blend_weightt": 0.3}},
                {"migration": {"recent_items": 0}}):
        with pytest.raises(ValidationError):
            tuning.with_settings(conf, bad)


def test_tuning_config_rejects_decays_outside_zero_one_and_weights_above_one(tmp_path):
    with pytest.raises(ValidationError, match="recent_decays"):
        TuningConfig(recent_decays=[1.0, 0.0])
    with pytest.raises(ValidationError, match="blend_weights"):
        TuningConfig(blend_weights=[0.5, 1.5])
    with pytest.raises(ValidationError, match="item_term_weights"):
        TuningConfig(item_term_weights=[-0.1])
    with pytest.raises(ValidationError, match="recent_items"):
        TuningConfig(recent_items=[])
    with pytest.raises(ConfigError, match="recent_decays"):
        make_conf(tmp_path, "tuning.recent_decays=[0.0]")
    with pytest.raises(ConfigError, match="blend_weights"):
        make_conf(tmp_path, "tuning.blend_weights=[1.5]")
    assert TuningConfig(recent_decays=[1.0], blend_weights=[0.0, 1.0]).recent_decays == [1.0]


def test_tuned_settings_flatten_to_dotted_keys():
    t = tuning.TunedSettings("r", dt.datetime(2026, 1, 2), dt.date(2026, 1, 1),
                             {"migration": {"recent_items": 2}, "topk": {"blend_weight": 0.3}}, 0.3, 0.2, 10)
    assert t.flat() == {"migration.recent_items": 2, "topk.blend_weight": 0.3}


# --- the job end to end ----------------------------------------------------------------------------------------------

SETTINGS = ("training.d_model=32", "training.layers=1", "training.max_seq_len=12", "training.batch_size=64",
            "training.lr=0.005", "training.epochs=2", "topk.users_per_batch=32", "topk.partitions=2")
K = 10


class _Heard(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tuned_lakehouse(spark, tmp_path_factory):
    """Generated data, one `driftrec tune` run ``t-1`` (a scratch lakehouse, a Ray Train model, the search)."""
    import ray

    from driftrec.synthetic import generate
    from jobs.tune import TuneJob
    from ray_trainers.session import ensure_ray
    from tests.transfer_helpers import load

    conf = make_conf(tmp_path_factory.mktemp("tune") / "lh", *SETTINGS)
    data = generate(SyntheticConfig(users=150, items=80, categories=4, days=10, seed=11, start_date="2026-01-01",
                                    migrating_fraction=0.3))
    load(spark, conf, data.events, data.items)
    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    topk_log, heard = logging.getLogger("driftrec.topk"), _Heard()
    topk_log.addHandler(heard)
    try:
        tuned = TuneJob(spark, conf, "t-1").run()
    finally:
        topk_log.removeHandler(heard)
        ray.shutdown()
    # The search scores the day after its cutoff from the state as of the cutoff, by design: no staleness warning.
    assert not [m for m in heard.messages if "migration state is as of" in m], heard.messages
    return conf, tuned, data.events


def _validation_ndcg(spark, conf, tuned, settings: dict) -> tuple[float, int]:
    """Mean NDCG@10 over the validation users of the real top-k job's rows on the tuning lakehouse with ``settings``
    (the search's configured or chosen values), and how many users it averages."""
    from pyspark.sql import functions as F

    from driftrec import lakehouse
    from driftrec.evaluation import metrics, protocols
    from driftrec.tables import EVENTS
    from jobs import scratch
    from jobs.topk import TopKJob
    from jobs.tune import TUNE_MODEL

    sconf = scratch.scratch_conf(conf, Path(conf.lakehouse.root) / "_evaluation" / "tune", "tune")
    kconf = scratch.with_sections(sconf, training={"model_name": TUNE_MODEL},
                                  topk={"all_users": True, "k": K, "model_version": None, "use_tuned": False})
    rows, _, _ = TopKJob(spark, tuning.with_settings(kconf, settings)).recommendations(
        tuned.data_through + dt.timedelta(days=1))
    truth = protocols.leave_one_out(lakehouse.read_table(spark, conf, EVENTS)).truth
    per = metrics.per_user(rows.select("user_id", "rank", "item_id", "score"), truth, (K,))
    got = per.agg(F.avg("ndcg").alias("ndcg"), F.count(F.lit(1)).alias("users")).first()
    return got["ndcg"], got["users"]


def test_tune_chooses_settings_the_top_k_job_reproduces_and_serves(spark, tuned_lakehouse):
    from pyspark.sql import functions as F

    from driftrec import lakehouse
    from driftrec.evaluation import protocols
    from driftrec.tables import EVENTS, TUNED_SETTINGS
    from jobs import scratch
    from jobs.topk import TopKJob
    from jobs.tune import TUNE_MODEL, TuneJob

    conf, tuned, events = tuned_lakehouse
    judged = int((events.groupby("user_id").size() >= 3).sum())
    assert tuned.run_id == "t-1" and tuned.users == judged > 20
    split = protocols.leave_one_out(lakehouse.read_table(spark, conf, EVENTS))
    assert tuned.data_through == split.train.agg(F.max("event_date")).first()[0] <= dt.date(2026, 1, 10)
    assert 0 < tuned.default_ndcg <= tuned.validation_ndcg <= 1
    # The tuning lakehouse holds the split's training events in one table not laid out by day (SCRATCH_EVENTS).
    sconf = scratch.scratch_conf(conf, Path(conf.lakehouse.root) / "_evaluation" / "tune", "tune")
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{sconf.table_path(EVENTS.logical)}`").first()
    assert detail["partitionColumns"] == []
    stored_ids = lakehouse.read_table(spark, sconf, EVENTS).select("event_id")
    assert stored_ids.count() == split.train.count() and stored_ids.exceptAll(split.train.select("event_id")).isEmpty()

    # The choice lies on the grids, and the search table holds every combination with consistent values.
    settings = tuned.settings
    assert set(settings) == {"migration", "topk"}
    assert tuning.EngineCombo(**settings["migration"]) in tuning.engine_grid(conf)
    top = settings["topk"]
    assert tuning.BlendCombo(top["blend_mode"], top["blend_weight"]) in tuning.blend_grid(conf)
    assert top["blend_weight_migrating"] is None or top["blend_weight_migrating"] in conf.tuning.blend_weights
    engine_rows = [s for s in tuned.search if s["stage"] == tuning.ENGINE]
    blend_rows = [s for s in tuned.search if s["stage"] == tuning.BLEND]
    assert len(engine_rows) == len(tuning.engine_grid(conf)) and len(blend_rows) == len(tuning.blend_grid(conf))
    best = max(engine_rows, key=lambda s: s["ndcg"])
    assert {k: best[k] for k in settings["migration"]} == settings["migration"]
    assert tuned.validation_ndcg >= max(s["ndcg"] for s in blend_rows) - 1e-12
    if top["blend_weight_migrating"] is None:  # the ungated choice is a row of the table
        row = next(s for s in blend_rows if (s["mode"], s["blend_weight"]) == (top["blend_mode"], top["blend_weight"]))
        assert row["ndcg"] == pytest.approx(tuned.validation_ndcg, abs=1e-12)

    # The row in tuned_settings, read back as the nightly reads it.
    stored = lakehouse.read_table(spark, conf, TUNED_SETTINGS).toPandas()
    assert list(stored["run_id"]) == ["t-1"]
    assert json.loads(stored["settings_json"].item()) == settings
    latest = tuning.latest(spark, conf)
    assert (latest.run_id, latest.settings, latest.users, latest.data_through) == ("t-1", settings, judged,
                                                                                   tuned.data_through)
    assert (latest.validation_ndcg, latest.default_ndcg) == (tuned.validation_ndcg, tuned.default_ndcg)
    assert latest.search == tuned.search

    # The key property: the real top-k path (Spark job, its scorer, the metrics module) reproduces both numbers.
    chosen_ndcg, users = _validation_ndcg(spark, conf, tuned, settings)
    assert users == judged
    assert chosen_ndcg == pytest.approx(tuned.validation_ndcg, abs=1e-9)
    configured_ndcg, _ = _validation_ndcg(spark, conf, tuned, {})
    assert configured_ndcg == pytest.approx(tuned.default_ndcg, abs=1e-9)

    # The nightly top-k serves the choice from the first night after the tuned data on (never on an earlier night: a
    # rerun of a past night serves what it could have served); with topk.use_tuned=false the configured values.
    configured = (conf.topk.blend_weight, conf.topk.blend_weight_migrating, conf.topk.blend_mode,
                  conf.migration.item_term_weight, conf.migration.recent_items, conf.migration.recent_decay)
    assert configured == (0.6, None, "linear", 0.5, 3, 1.0)

    def serving(job_conf, ds):
        job = TopKJob(spark, job_conf)
        job._serve_tuned(ds)  # what prepare(ds) applies before it loads anything
        c = job.conf
        return job.tuned, (c.topk.blend_weight, c.topk.blend_weight_migrating, c.topk.blend_mode,
                           c.migration.item_term_weight, c.migration.recent_items, c.migration.recent_decay)

    for ds in (tuned.data_through, tuned.data_through + dt.timedelta(days=1), tuned.data_through + dt.timedelta(30)):
        served, values = serving(conf, ds)
        assert served.run_id == "t-1", ds
        assert values == (top["blend_weight"], top["blend_weight_migrating"], top["blend_mode"],
                          *(settings["migration"][k] for k in ("item_term_weight", "recent_items", "recent_decay")))
    assert serving(conf, tuned.data_through - dt.timedelta(days=1)) == (None, configured)
    assert serving(scratch.with_sections(conf, topk={"use_tuned": False}),
                   tuned.data_through + dt.timedelta(days=1)) == (None, configured)

    # A rerun of the same run id (the search again on the same scratch model) replaces its row: still one row, the
    # new time, the same (deterministic) choice.
    sconf = scratch.scratch_conf(conf, Path(conf.lakehouse.root) / "_evaluation" / "tune", "tune")
    again = TuneJob(spark, conf, "t-1").search(sconf, tuned.data_through, split.truth, TUNE_MODEL)
    assert again.settings == settings and again.users == judged
    assert again.validation_ndcg == pytest.approx(tuned.validation_ndcg, abs=1e-12)
    tuning.record(spark, conf, again)
    stored = lakehouse.read_table(spark, conf, TUNED_SETTINGS).toPandas()
    assert list(stored["run_id"]) == ["t-1"]
    assert stored["tuned_at"].item() == pd.Timestamp(again.tuned_at) > pd.Timestamp(tuned.tuned_at)


def test_the_day_after_a_cutoff_is_scored_from_the_cutoffs_state_without_a_staleness_warning(spark, tuned_lakehouse):
    """Tuning and evaluation rank the day after their cutoff from the migration state as of it, by design; the nightly
    (no ``state_through``) still hears that a state one night old is stale."""
    import logging

    from jobs import scratch
    from jobs.topk import TopKJob
    from jobs.tune import TUNE_MODEL

    conf, tuned, _ = tuned_lakehouse
    sconf = scratch.scratch_conf(conf, Path(conf.lakehouse.root) / "_evaluation" / "tune", "tune")
    kconf = scratch.with_sections(sconf, training={"model_name": TUNE_MODEL},
                                  topk={"all_users": True, "model_version": None, "use_tuned": False})
    day_after = tuned.data_through + dt.timedelta(days=1)
    topk_log, handler = logging.getLogger("driftrec.topk"), _Heard()
    topk_log.addHandler(handler)
    try:
        stale = {}
        for label, through in (("nightly", None), ("after cutoff", tuned.data_through), ("expects the day", day_after)):
            handler.messages.clear()
            TopKJob(spark, kconf, state_through=through)._migration_state(day_after)
            stale[label] = any("migration state is as of" in m for m in handler.messages)
    finally:
        topk_log.removeHandler(handler)
    assert stale == {"nightly": True, "after cutoff": False, "expects the day": True}
