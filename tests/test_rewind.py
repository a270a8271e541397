"""A rewind that cannot restore every table (its old files vacuumed by forget-user) touches none and recomputes the
state from the stored events instead: after ``nightly D; forget-user U (retention 0); nightly D --force;
nightly D+1`` the migration tables equal those of a lakehouse that never had U and ran the same nights."""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import SyntheticConfig
from driftrec.synthetic import generate
from driftrec.tables import DRIFT_PARAMS, EVENTS, MIGRATION_RUNS, MIGRATION_TABLES, USER_DRIFT, USER_INTEREST
from jobs.forget_user import ForgetUserJob
from jobs.migrate import MigrationJob
from jobs.nightly import SUCCEEDED, NightlyJob
from tests.conftest import make_conf
from tests.test_nightly import _assert_same, _frame, _migration_specs
from tests.transfer_helpers import load

# Three one-pass rebuilds and five migration nights (~7.5 min here): a whole-night robustness scenario, opt-in
# with the others (DRIFTREC_HEAVY_TESTS=1) until a night costs seconds.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

START = dt.date(2026, 3, 1)
D = START + dt.timedelta(days=3)
D1 = D + dt.timedelta(days=1)
U = 990_000_001  # one event, on D
MIGRATE_ONLY = 'pipeline.stages=["migrate"]'


def _lakehouse(spark, root, events: pd.DataFrame, items: pd.DataFrame):
    """Events loaded, the history before D built in one pass (as the demo does), night D run."""
    conf = make_conf(root, MIGRATE_ONLY)
    load(spark, conf, events, items)
    MigrationJob(spark, conf).rebuild(D - dt.timedelta(days=1))
    assert [(r.stage, r.status) for r in NightlyJob(spark, conf).run(D).records] == [("migrate", SUCCEEDED)]
    return conf


def test_a_rewind_past_vacuumed_files_recomputes_instead_of_half_restoring(spark, tmp_path, caplog):
    data = generate(SyntheticConfig(users=30, items=30, categories=3, days=5, seed=5, start_date=START.isoformat()))
    events = data.events[pd.to_datetime(data.events["timestamp"], unit="s").dt.date <= D1]
    noon = int(dt.datetime.combine(D, dt.time(12), dt.UTC).timestamp())
    u_event = pd.DataFrame([{"user_id": U, "item_id": int(data.items["item_id"].iloc[0]), "event_type": "view",
                             "timestamp": noon, "weight": 1.0}])

    conf = _lakehouse(spark, tmp_path / "main", pd.concat([events, u_event], ignore_index=True), data.items)
    d_batch = next(r for r in MigrationJob(spark, conf)._log_rows() if r["ds"] == D and r["status"] == "finished")
    ForgetUserJob(spark, conf).run([U], retention_hours=0)

    with caplog.at_level(logging.WARNING, logger="driftrec.migrate"):
        forced = NightlyJob(spark, conf).run(D, force=True)
    assert [(r.stage, r.status) for r in forced.records] == [("migrate", SUCCEEDED)], forced.summary()
    assert any("cannot rewind the migration tables to before " + str(D) in m and "vacuumed" in m
               for m in caplog.messages), caplog.messages
    for spec in MIGRATION_TABLES:  # checked before touching any: no table was half restored
        ops = [r["operation"] for r in DeltaTable.forPath(spark, conf.table_path(spec.logical)).history()
               .select("operation").collect()]
        assert "RESTORE" not in ops, spec.logical
    # Why: the versions before D's batch are gone for the tables forget-user vacuumed, not for the others.
    before_d = d_batch["state_versions"]
    assert "vacuumed" in lakehouse.restore_problem(spark, conf, USER_INTEREST, before_d[USER_INTEREST.logical])
    assert lakehouse.restore_problem(spark, conf, MIGRATION_RUNS, before_d[MIGRATION_RUNS.logical]) is None

    assert [(r.stage, r.status) for r in NightlyJob(spark, conf).run(D1).records] == [("migrate", SUCCEEDED)]

    clean = _lakehouse(spark, tmp_path / "clean", events, data.items)  # never had U
    assert [(r.stage, r.status) for r in NightlyJob(spark, clean).run(D1).records] == [("migrate", SUCCEEDED)]

    for spec in _migration_specs():
        got, want = _frame(spark, conf, spec), _frame(spark, clean, spec)
        assert len(want) > 0 or spec.logical == "user_drift", spec.logical
        _assert_same(got, want, spec.logical)
    assert sorted(MigrationJob(spark, conf).processed_dates()) == [D - dt.timedelta(days=1), D, D1]
    counted = lakehouse.read_table(spark, conf, DRIFT_PARAMS).where(F.col("ds") == F.lit(D)).first()["n_events"]
    assert counted == lakehouse.read_table(spark, clean, EVENTS).where(F.col("event_date") == F.lit(D)).count()
    assert lakehouse.read_table(spark, conf, USER_DRIFT).where(F.col("user_id") == U).count() == 0
