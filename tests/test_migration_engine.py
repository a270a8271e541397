"""Migration engine on small hand-made data: Spark transforms against the numpy kernels, decayed counts
incremental == from scratch, empty day, idempotent rerun, watermark, Markov scores."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from driftrec import jobstats, lakehouse
from driftrec.categories import item_categories
from driftrec.migration import kernels
from driftrec.migration import transitions as tr
from driftrec.migration.scoring import MarkovState
from tests import reference_migration as ref
from tests.reference_migration import markov_scores
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    EVENTS,
    ITEM_POPULARITY,
    ITEM_TRANSITION_COUNTS,
    ITEM_TRANSITIONS,
    MIGRATION_TABLES,
    USER_DRIFT,
    USER_INTEREST,
    USER_TRANSITIONS,
)
from jobs.migrate import MigrationJob
from tests.migration_helpers import put_events, put_items
from tests.conftest import make_conf

D = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(4)]
HALF_LIFE = 3.0
# Spark jobs of the one nightly run below (driver-issued actions x query stages; driftrec.jobstats): measured 201
# (local[*], 2 cores, shuffle_partitions=2) with the bookkeeping steps 0-2 of the plan; lower it as later steps land.
NIGHT_JOB_BUDGET = 210


def test_worked_example_and_migration_term_matches_kernel(spark):
    # p(A)=0.6, p(B)=0.4, p(C|A)=0.3, p(C|B)=0.7, no shrinkage -> migration term for C is 0.46.
    p = spark.createDataFrame([(1, "A", 0.6), (1, "B", 0.4), (1, "C", 0.0)], "user_id long, category string, p double")
    counts = spark.createDataFrame(
        [(1, "A", "A", 7.0), (1, "A", "C", 3.0), (1, "B", "A", 3.0), (1, "B", "C", 7.0)],
        "user_id long, from_cat string, to_cat string, count double",
    )
    glob = spark.createDataFrame(
        [(f, t, 1 / 3) for f in "ABC" for t in "ABC"], "from_cat string, to_cat string, prob double"
    )
    m = {r["category"]: r["m"] for r in ref.migration_term(p, counts, glob, 0.0).collect()}
    assert m["C"] == pytest.approx(0.46, abs=1e-12)
    assert sum(m.values()) == pytest.approx(1.0, abs=1e-12)

    # With shrinkage and a user row never left from (C), Spark equals kernels.shrunk_rows + migration_term.
    rng = np.random.default_rng(3)
    cats = ["A", "B", "C"]
    user_c = rng.integers(0, 5, size=(3, 3)).astype(float)
    user_c[2] = 0.0
    glob_p = kernels.smoothed_rows(rng.integers(0, 9, size=(3, 3)).astype(float), 0.5)
    pv = np.array([0.2, 0.3, 0.5])
    expected = kernels.migration_term(pv, kernels.shrunk_rows(user_c, glob_p, 2.0))
    p2 = spark.createDataFrame([(1, c, float(pv[i])) for i, c in enumerate(cats)], "user_id long, category string, p double")
    c2 = spark.createDataFrame(
        [(1, cats[i], cats[j], float(user_c[i, j])) for i in range(3) for j in range(3) if user_c[i, j] > 0],
        "user_id long, from_cat string, to_cat string, count double",
    )
    g2 = spark.createDataFrame(
        [(cats[i], cats[j], float(glob_p[i, j])) for i in range(3) for j in range(3)],
        "from_cat string, to_cat string, prob double",
    )
    got = {r["category"]: r["m"] for r in ref.migration_term(p2, c2, g2, 2.0).collect()}
    np.testing.assert_allclose([got[c] for c in cats], expected, rtol=1e-12)


ITEMS_ROWS = [
    (1, "Alien Planet", ["scifi"]),
    (2, "Warp Drive", ["scifi"]),
    (3, "Garlic Pasta", ["cooking"]),
    (4, "Sourdough", ["cooking"]),
    (5, "Space Food", ["scifi", "cooking"]),
    (6, "Uncategorised", []),
]


def _events():
    """Four days; D[2] has no events; user 3 crosses midnight between D[0] and D[1]."""
    rows = []
    for u in (1, 2):
        for d in (0, 1, 3):
            day = D[d].isoformat()
            seq = [1, 2, 5, 3] if u == 1 else [3, 4, 3, 6, 1]
            if d >= 3 and u == 1:
                seq = [3, 4, 4, 5]  # user 1 moves to cooking
            for k, item in enumerate(seq):
                rows.append((u, item, f"{day} 10:{k * 5:02d}:00"))
    rows += [(3, 1, f"{D[0]} 23:50:00"), (3, 3, f"{D[1]} 00:10:00"), (3, 2, f"{D[1]} 09:00:00")]
    return rows


def _snapshot(spark, conf):
    out = {}
    for spec in MIGRATION_TABLES:
        df = lakehouse.read_table(spark, conf, spec)
        df = df.drop(*[c for c in ("finished_at", "logged_at", "batch_id", "state_versions") if c in df.columns])
        out[spec.logical] = sorted(tuple(r) for r in df.collect())
    return out


@pytest.mark.slow
def test_nightly_state_matches_scratch_and_rerun_is_idempotent(spark, tmp_path, monkeypatch):
    conf = make_conf(
        tmp_path / "lh",
        f"migration.half_life_days={HALF_LIFE}",
        f"migration.item_half_life_days={HALF_LIFE}",  # decayed item counts: the lazy merge is what is checked
        "migration.gap_minutes=30",
        "migration.top_n_successors=3",
        "migration.min_fit_events=5",
        "migration.shrinkage_strength=2.0",
    )
    put_items(spark, conf, ITEMS_ROWS)
    put_events(spark, conf, _events())
    job = MigrationJob(spark, conf)
    job.backfill(D[0], D[2])  # one batch: three nights staged, one commit per table

    # Empty day D[2]: the global matrix is brought forward (decayed, still stochastic) and the night is logged.
    glob = lakehouse.read_table(spark, conf, CATEGORY_TRANSITIONS)
    assert {r[0] for r in glob.select("updated_through").distinct().collect()} == {D[2]}
    params = {r["ds"]: r for r in lakehouse.read_table(spark, conf, DRIFT_PARAMS).collect()}
    assert params[D[2]]["n_events"] == 0 and params[D[2]]["n_users"] == 0
    assert lakehouse.read_table(spark, conf, USER_DRIFT).where(F.col("ds") == D[2]).count() == 0

    assert job.processed_dates() == D[:3]
    jobstats.start()
    try:
        with jobstats.job_group(spark, "night"):
            (night,) = job.run(D[3])  # a nightly run: its own batch, MERGEs only what D[3] touched
        jobs = jobstats.report(spark)
    finally:
        jobstats.stop()
    assert night.ds == D[3] and night.n_events == 9
    print(f"Spark jobs of one nightly run: {sum(jobs.values())} {jobs}")
    assert 0 < sum(jobs.values()) <= NIGHT_JOB_BUDGET, jobs

    # Incremental nights == one recomputation from scratch, to 1e-9 relative, for every decayed count.
    events = lakehouse.read_table(spark, conf, EVENTS).select(*tr.EVENT_COLS)
    cats = item_categories(spark, conf)
    pairs = tr.transition_pairs(events, None, 30)
    end = D[-1]

    def check(state, keys, since, scratch):
        got = state.select(*keys, tr.decayed(F.col("count"), F.col(since), end, HALF_LIFE).alias("got"))
        joined = got.join(scratch, keys, "full_outer").collect()
        assert joined, "no counts"
        for r in joined:
            assert r["got"] is not None and r["count"] is not None, r
            assert r["got"] == pytest.approx(r["count"], rel=1e-9), r

    cp = tr.category_pairs(pairs, cats)
    check(lakehouse.read_table(spark, conf, USER_TRANSITIONS), ["user_id", "from_cat", "to_cat"], "updated_through",
          tr.counts_from_scratch(cp, ["user_id", "from_cat", "to_cat"], "to_date", end, HALF_LIFE))
    check(lakehouse.read_table(spark, conf, CATEGORY_TRANSITIONS).where("count > 0"), ["from_cat", "to_cat"],
          "updated_through", tr.counts_from_scratch(cp, ["from_cat", "to_cat"], "to_date", end, HALF_LIFE))
    check(lakehouse.read_table(spark, conf, ITEM_TRANSITION_COUNTS), ["from_item", "to_item"], "as_of",
          tr.counts_from_scratch(tr.item_pairs(pairs), ["from_item", "to_item"], "to_date", end, HALF_LIFE))
    pop_rows = events.select("item_id", F.to_date("event_ts").alias("d"), F.lit(1.0).alias("n"))
    check(lakehouse.read_table(spark, conf, ITEM_POPULARITY), ["item_id"], "as_of",
          tr.counts_from_scratch(pop_rows, ["item_id"], "d", end, HALF_LIFE))
    # The midnight pair of user 3 (scifi -> cooking) was counted on D[1] through the carried last event.
    u3 = lakehouse.read_table(spark, conf, USER_TRANSITIONS).where("user_id = 3").collect()
    assert {(r["from_cat"], r["to_cat"]) for r in u3} == {("scifi", "cooking")}

    # Invariants: every distribution sums to 1; user probabilities equal the kernel's shrunk rows.
    sums = lambda df, key, col: [r[1] for r in df.groupBy(*key).agg(F.sum(col)).collect()]  # noqa: E731
    assert sums(glob := lakehouse.read_table(spark, conf, CATEGORY_TRANSITIONS), ["from_cat"], "prob") == \
        pytest.approx([1.0] * 2, abs=1e-12)
    assert sums(lakehouse.read_table(spark, conf, USER_INTEREST), ["user_id"], "p") == pytest.approx([1.0] * 3, abs=1e-12)
    succ = lakehouse.read_table(spark, conf, ITEM_TRANSITIONS)
    assert all(s == pytest.approx(1.0, abs=1e-12) for s in sums(succ, ["from_item"], "prob"))
    assert succ.agg(F.max("rank")).first()[0] <= 3 and succ.where("prob >= 1.0").count() == 0
    order = ["cooking", "scifi"]
    gp = {(r["from_cat"], r["to_cat"]): r["prob"] for r in glob.collect()}
    gmat = np.array([[gp[(f, t)] for t in order] for f in order])
    u1 = lakehouse.read_table(spark, conf, USER_TRANSITIONS).where("user_id = 1").collect()
    cmat = np.zeros((2, 2))
    for r in u1:
        cmat[order.index(r["from_cat"]), order.index(r["to_cat"])] = r["count"]
    want = kernels.shrunk_rows(cmat, gmat, 2.0)
    for r in u1:
        assert r["prob"] == pytest.approx(want[order.index(r["from_cat"]), order.index(r["to_cat"])], rel=1e-12)

    # a and b were fitted by maximum likelihood and recorded; user 1 is rising in cooking on the last night.
    last = params_last = lakehouse.read_table(spark, conf, DRIFT_PARAMS).where(F.col("ds") == end).first()
    assert params_last["method"] == "fitted" and last["a"] + last["b"] <= 1.0 + 1e-12
    assert last["log_likelihood"] >= last["log_likelihood_default"] - 1e-9
    d1 = lakehouse.read_table(spark, conf, USER_DRIFT).where((F.col("ds") == end) & (F.col("user_id") == 1)).first()
    assert d1["rising_category"] == "cooking" and d1["falling_category"] == "scifi" and d1["js_divergence"] > 0

    # Rerunning the latest night gives the same tables, also when the first rerun is killed between its commits
    # (its 'started' batch is rolled back by the next run); an older night is refused (backfill rewinds instead).
    before = _snapshot(spark, conf)

    def killed(*args, **kwargs):
        raise RuntimeError("killed in the middle of the batch's commits")

    monkeypatch.setattr(lakehouse, "replace_where", killed)
    with pytest.raises(RuntimeError, match="killed"):
        job.run(end)
    monkeypatch.undo()
    half = _snapshot(spark, conf)
    assert half["migration_runs"] != before["migration_runs"]  # the interrupted batch left its 'started' rows
    assert job.processed_dates() == D[:3]
    job.run(end)
    assert _snapshot(spark, conf) == before
    with pytest.raises(ValueError, match="watermark"):
        job.run(D[1])


def test_markov_scores_are_a_distribution_with_reasons(spark):
    """markov_scores on a hand-built state (no Delta): each user's scores over the catalogue sum to 1."""
    cats = ["cooking", "scifi"]
    df = spark.createDataFrame
    state = MarkovState(
        interest=df([(1, "scifi", 0.3, 2.0, 5.0), (1, "cooking", 0.7, 3.0, 2.0)],
                    "user_id long, category string, p double, recent_count double, long_term_count double"),
        user_counts=df([(1, "scifi", "cooking", 2.0)], "user_id long, from_cat string, to_cat string, count double"),
        global_matrix=df([(f, t, 1.0, 0.5) for f in cats for t in cats],
                         "from_cat string, to_cat string, count double, prob double"),
        item_successors=df([(1, 2, 0.75), (1, 3, 0.25), (3, 4, 1.0)], "from_item long, to_item long, prob double"),
        item_cats=df([(1, "scifi", 1.0), (2, "scifi", 1.0), (3, "cooking", 1.0), (4, "cooking", 1.0),
                      (5, "scifi", 0.5), (5, "cooking", 0.5)], "item_id long, category string, share double"),
        item_popularity=df([(1, 3.0), (2, 1.0), (3, 2.0)], "item_id long, count double"),
        titles=df([(i, f"Title {i}") for i in range(1, 7)], "item_id long, title string"),
        a=0.6,
        b=0.3,
    )
    cands = df([(u, i) for u in (1, 99) for i in range(1, 7)], "user_id long, item_id long")
    recent = df([(1, 1, dt.datetime(2026, 3, 1, 10))], "user_id long, item_id long, event_ts timestamp")
    conf = make_conf(Path("/tmp/unused"))
    scores = {(r["user_id"], r["item_id"]): r
              for r in markov_scores(cands, recent, state, conf.migration, conf.topk.rising_margin).collect()}
    assert len(scores) == 12
    for u in (1, 99):  # 99 is unknown: popularity inside the global category mix, no item term
        assert sum(scores[(u, i)]["score"] for i in range(1, 7)) == pytest.approx(1.0, abs=1e-9)
    assert scores[(1, 6)]["score"] == 0.0  # item 6: no category, nobody's successor
    assert scores[(1, 2)]["reason"] == "people who watched Title 1 next watched this"
    assert scores[(1, 4)]["reason"] == "your interest in cooking is rising"
    assert scores[(99, 1)]["reason"].startswith("you often watch ")
