"""Ground truth from driftrec.synthetic: the category chain is recovered and user_drift finds the migrants."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import SyntheticConfig
from driftrec.synthetic import generate
from driftrec.tables import CATEGORY_TRANSITIONS, DRIFT_PARAMS, EVENTS, USER_DRIFT
from jobs.migrate import MigrationJob
from tests.migration_helpers import event_columns, put_items
from tests.conftest import make_conf

DAYS = 3  # nights are the cost here; the chain needs pairs, not days


def _load(spark, conf, data) -> None:
    ev = data.events.copy()
    df = spark.createDataFrame(ev[["user_id", "item_id", "event_type", "timestamp", "weight"]])
    lakehouse.append(spark, conf, EVENTS, event_columns(df.withColumn("event_ts", F.timestamp_seconds("timestamp"))))
    put_items(spark, conf, [(int(r.item_id), r.title, list(r.categories)) for r in data.items.itertuples()])


@pytest.mark.slow
def test_recovers_the_category_chain_and_fits_drift_weights(spark, tmp_path):
    cfg = SyntheticConfig(users=300, items=150, categories=5, days=DAYS, events_per_user_day=8.0,
                          migrating_fraction=0.25, seed=11)
    data = generate(cfg)
    conf = make_conf(tmp_path / "lh", "migration.half_life_days=30", "migration.gap_minutes=60")
    _load(spark, conf, data)
    start = dt.date.fromisoformat(cfg.start_date)
    end = start + dt.timedelta(days=DAYS - 1)
    job = MigrationJob(spark, conf)
    job.backfill(start, end)

    truth = data.truth
    names = truth.categories
    got = np.zeros((len(names), len(names)))
    for r in lakehouse.read_table(spark, conf, CATEGORY_TRANSITIONS).collect():
        got[names.index(r["from_cat"]), names.index(r["to_cat"])] = r["prob"]
    err = np.abs(got - truth.category_transition).max()
    print(f"category matrix max abs error {err:.4f}")
    assert err <= 0.05

    params = lakehouse.read_table(spark, conf, DRIFT_PARAMS).orderBy("ds").collect()
    fitted = [r for r in params if r["method"] == "fitted"]
    assert fitted, "a and b were never fitted"
    for r in fitted:
        assert r["log_likelihood"] >= r["log_likelihood_default"] - 1e-6
    print("fits:", [(str(r["ds"]), round(r["a"], 3), round(r["b"], 3)) for r in fitted])



@pytest.mark.slow
def test_user_drift_finds_the_migrating_users(spark, tmp_path):
    # Sessions start in the user's focal category and mostly stay there, so a day's events show the interest;
    # migrations start on day 2-3 and end by day 6 of 8.
    cfg = SyntheticConfig(users=300, items=150, categories=5, days=8, events_per_user_day=8.0,
                          migrating_fraction=0.25, seed=11, stickiness_min=0.95, stickiness_max=0.99,
                          home_affinity=1.0)
    data = generate(cfg)
    conf = make_conf(tmp_path / "lh", "migration.gap_minutes=60", "migration.drift_threshold=0.04")
    _load(spark, conf, data)
    start = dt.date.fromisoformat(cfg.start_date)
    end = start + dt.timedelta(days=cfg.days - 1)
    MigrationJob(spark, conf).backfill(start, end)
    truth = data.truth
    # Who is migrating, and toward what: the warehouse query, users flagged on either of the last two nights.
    drift = lakehouse.read_table(spark, conf, USER_DRIFT)
    assert drift.select("ds").distinct().count() == cfg.days
    last = (
        drift.where(F.col("ds") >= F.lit(end - dt.timedelta(days=1)))
        .where("migrating")
        .groupBy("user_id")
        .agg(F.max_by("rising_category", "js_divergence").alias("rising"))
        .collect()
    )
    flagged = {r["user_id"]: r["rising"] for r in last}
    planted = {m["user_id"]: m["to_category"] for m in truth.migrating}
    hits = set(flagged) & set(planted)
    precision = len(hits) / max(len(flagged), 1)
    recall = len(hits) / len(planted)
    toward = sum(flagged[u] == planted[u] for u in hits) / max(len(hits), 1)
    print(f"drift precision {precision:.3f} recall {recall:.3f} direction {toward:.3f} "
          f"({len(flagged)} flagged, {len(planted)} planted)")
    assert precision >= 0.9 and recall >= 0.9
    assert toward >= 0.9
