"""The one-pass state builder against the nightly engine on the hand-made history, and its leak-freedom."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.migration import kernels
from driftrec.migration import transitions as tr
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    ITEM_POPULARITY,
    ITEM_TRANSITION_COUNTS,
    MIGRATION_TABLES,
    USER_DRIFT,
    USER_INTEREST,
    USER_LAST_EVENT,
    USER_TRANSITIONS,
)
from jobs.migrate import MigrationJob
from tests.conftest import make_conf
from tests.migration_helpers import assert_rows_close, put_events, put_items
from tests.test_migration_engine import D, HALF_LIFE, ITEMS_ROWS, _events, _snapshot

SETTINGS = (
    f"migration.half_life_days={HALF_LIFE}",
    "migration.gap_minutes=30",
    "migration.top_n_successors=3",
    "migration.min_fit_events=5",
    "migration.shrinkage_strength=2.0",
)


def _lakehouse(spark, root, events, *extra):
    conf = make_conf(root, *SETTINGS, *extra)
    put_items(spark, conf, ITEMS_ROWS)
    put_events(spark, conf, events)
    return conf


def _rows(spark, conf, spec, keys, cols):
    return {tuple(r[k] for k in keys): tuple(r[c] for c in cols) for r in lakehouse.read_table(spark, conf, spec).collect()}


@pytest.mark.slow  # ~6 min: a rebuild and the same nights one by one
def test_rebuild_matches_nightly_counts_and_leaks_nothing_after_the_cutoff(spark, tmp_path):
    end = D[3]
    nightly = _lakehouse(spark, tmp_path / "nightly", _events())
    MigrationJob(spark, nightly).backfill(D[0], end)
    bulk = _lakehouse(spark, tmp_path / "bulk", _events())
    job = MigrationJob(spark, bulk)
    report = job.rebuild(end)
    assert report.n_events == len(_events()) and report.n_users == 3

    # Counts: identical to the nightly engine once both are brought to the same day (category level decayed with
    # half_life_days, item level plain sums: migration.item_half_life_days is None by default).
    assert bulk.migration.item_half_life_days is None

    def at_end(conf, spec, keys, since, half_life):
        df = lakehouse.read_table(spark, conf, spec)
        return {tuple(r[k] for k in keys): r["c"] for r in
                df.select(*keys, tr.decayed(F.col("count"), F.col(since), end, half_life).alias("c")).collect()}

    for spec, keys, since, half_life in (
        (USER_TRANSITIONS, ["user_id", "from_cat", "to_cat"], "updated_through", HALF_LIFE),
        (ITEM_TRANSITION_COUNTS, ["from_item", "to_item"], "as_of", None),
        (ITEM_POPULARITY, ["item_id"], "as_of", None),
    ):
        want, got = at_end(nightly, spec, keys, since, half_life), at_end(bulk, spec, keys, since, half_life)
        assert want.keys() == got.keys(), spec.logical
        assert all(got[k] == pytest.approx(want[k], rel=1e-9) for k in want), spec.logical

    # User rows are as of each user's last active day, as the nightly engine leaves them.
    cols = ("recent_count", "long_term_count", "as_of")
    want = _rows(spark, nightly, USER_INTEREST, ("user_id", "category"), cols)
    got = _rows(spark, bulk, USER_INTEREST, ("user_id", "category"), cols)
    assert want.keys() == got.keys()
    for k in want:
        assert got[k][:2] == pytest.approx(want[k][:2], rel=1e-9) and got[k][2] == want[k][2], k
    assert _rows(spark, bulk, USER_LAST_EVENT, ("user_id",), ("item_id", "event_ts")) == \
        _rows(spark, nightly, USER_LAST_EVENT, ("user_id",), ("item_id", "event_ts"))

    # Interest: a distribution per user. User 3 (scifi on D[0]; cooking + scifi on D[1]; no pair before D[1]'s
    # update) follows the kernel recurrence exactly, with the cutoff's g and P_g and the fitted (a, b).
    p_want = _rows(spark, nightly, USER_INTEREST, ("user_id", "category"), ("p",))
    p_got = _rows(spark, bulk, USER_INTEREST, ("user_id", "category"), ("p",))
    for user in (1, 2, 3):
        assert sum(v[0] for k, v in p_got.items() if k[0] == user) == pytest.approx(1.0, abs=1e-12)
    cats = ["cooking", "scifi"]
    glob = _rows(spark, bulk, CATEGORY_TRANSITIONS, ("from_cat", "to_cat"), ("count", "prob"))
    pg = np.array([[glob[(f, t)][1] for t in cats] for f in cats])
    col = np.array([sum(glob[(f, t)][0] for f in cats) for t in cats])
    alpha = bulk.migration.category_smoothing
    g = (col + alpha) / (col.sum() + len(cats) * alpha)
    fitted = lakehouse.read_table(spark, bulk, DRIFT_PARAMS).first()
    p = g
    for n in (np.array([0.0, 1.0]), np.array([1.0, 1.0])):
        p = kernels.update_interest(p, pg, g, fitted["a"], fitted["b"], n, bulk.migration.prior_strength)
    assert [p_got[(3, c)][0] for c in cats] == pytest.approx(list(p), rel=1e-12)
    # Users 1 and 2 (12+ events each) end close to the nightly engine, which used each night's g, P_g and (a, b).
    for user in (1, 2):
        assert sum(abs(p_got[k][0] - p_want[k][0]) for k in p_want if k[0] == user) < 0.1, user

    # Drift as of each user's last active day: user 1 moved to cooking on D[3]; one row per user.
    drift = {r["user_id"]: r for r in lakehouse.read_table(spark, bulk, USER_DRIFT).collect()}
    assert set(drift) == {1, 2, 3} and drift[1]["ds"] == end and drift[3]["ds"] == D[1]
    assert drift[1]["rising_category"] == "cooking" and drift[1]["js_divergence"] > 0
    params = lakehouse.read_table(spark, bulk, DRIFT_PARAMS).collect()
    assert len(params) == 1 and params[0]["ds"] == end and params[0]["method"] == "bulk-fitted"
    assert params[0]["a"] + params[0]["b"] <= 1.0 + 1e-12
    assert params[0]["log_likelihood"] >= params[0]["log_likelihood_default"] - 1e-9

    # The watermark continues from the cutoff; a second rebuild is refused and changes nothing.
    assert job.processed_dates() == [end]
    before = _snapshot(spark, bulk)
    with pytest.raises(ValueError, match="already holds nights"):
        job.rebuild(end)
    assert _snapshot(spark, bulk) == before
    (night,) = job.run(end + dt.timedelta(days=1))
    assert night.n_events == 0 and job.processed_dates() == [end, end + dt.timedelta(days=1)]

    # Leak-freedom: the state as of D[1] is the same whether or not the lakehouse holds later events.
    cut = D[1]
    with_later = _lakehouse(spark, tmp_path / "later", _events())
    without = _lakehouse(spark, tmp_path / "without", [r for r in _events() if r[2][:10] <= cut.isoformat()])
    MigrationJob(spark, with_later).rebuild(cut)
    MigrationJob(spark, without).rebuild(cut)
    a, b = _snapshot(spark, with_later), _snapshot(spark, without)
    for spec in MIGRATION_TABLES:
        if spec.logical not in ("migration_runs", "drift_params"):
            assert_rows_close(a[spec.logical], b[spec.logical], spec.logical)
    params = [lakehouse.read_table(spark, c, DRIFT_PARAMS).select("a", "b", "n_events").first() for c in
              (with_later, without)]
    assert_rows_close([tuple(params[0])], [tuple(params[1])], "drift_params")
