"""`driftrec nightly`: stage bookkeeping, resume, the run lock, a corrupt model checkpoint, and kills mid-write.

One module world: generated data in a lakehouse ``main`` that runs night D0 stage by stage, with a copy of the
lakehouse taken before each stage. The kill tests start `driftrec nightly` for D0 in a child process on such a copy,
stop it the moment a data file of the stage's table exists that no commit references, kill it, rerun the night in
this process, and compare the stage's tables with ``main``'s.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from driftrec import lakehouse, registry
from driftrec.config import Config, SyntheticConfig
from driftrec.models.checkpoint import WEIGHTS
from driftrec.synthetic import generate
from driftrec.tables import (
    DRIFT_PARAMS,
    EVENTS,
    ITEM_TEXT_EMBEDDINGS,
    MIGRATION_STATE_TABLES,
    MODEL_REGISTRY,
    PIPELINE_RUNS,
    RECOMMENDATIONS,
    TRAINING_SEQUENCES,
    USER_DRIFT,
    TableSpec,
)
from jobs.nightly import FAILED, RUNNING, STAGES, SUCCEEDED, NightlyJob, PipelineLocked, RunLock
from tests.conftest import REPO, make_conf
from tests.transfer_helpers import load

pytestmark = pytest.mark.slow  # several nights with Ray Train runs, and child processes with their own Spark

START = dt.date(2026, 1, 1)
D0 = START + dt.timedelta(days=4)
D1 = D0 + dt.timedelta(days=1)
ORDER = list(STAGES)
OVERRIDES = (
    "training.d_model=16", "training.layers=1", "training.max_seq_len=8", "training.epochs=2",
    "training.warm_epochs=1", "training.batch_size=64", "training.num_workers=1",
    "topk.k=5", "topk.lookback_days=2", "topk.users_per_batch=32", "topk.partitions=2",
)
COPY_IGNORE = shutil.ignore_patterns("_metastore", "_warehouse", "_ray_results", "_pipeline")


@dataclass
class World:
    main: Config
    snapshots: dict[str, Path]  # stage -> copy of main taken just before that stage ran for D0
    run_ids: list[str]


def _conf(root: Path, *extra: str) -> Config:
    return make_conf(root, *OVERRIDES, *extra)


def _stages_through(stage: str) -> str:
    return "pipeline.stages=[" + ", ".join(f'"{s}"' for s in ORDER[: ORDER.index(stage) + 1]) + "]"


def _versions(spark, conf: Config) -> dict[str, int]:
    from driftrec.tables import ALL_TABLES

    return {s.logical: lakehouse.table_version(spark, conf, s) for s in ALL_TABLES
            if lakehouse.table_exists(spark, conf, s)}


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory) -> World:
    import ray

    base = tmp_path_factory.mktemp("nightly")
    main = _conf(base / "main")
    data = generate(SyntheticConfig(users=50, items=40, categories=3, days=6, seed=11, start_date=START.isoformat()))
    events = data.events[pd.to_datetime(data.events["timestamp"], unit="s").dt.date <= D1]
    load(spark, main, events, data.items)
    from ray_trainers.session import ensure_ray

    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)  # retried local start
    snapshots, run_ids = {}, []
    for stage in ORDER:  # D0 one stage per invocation, copying the lakehouse before each
        snapshots[stage] = base / f"before_{stage}"
        shutil.copytree(main.lakehouse.root, snapshots[stage], ignore=COPY_IGNORE)
        staged = main.model_copy(update={"pipeline": main.pipeline.model_copy(
            update={"stages": ORDER[: ORDER.index(stage) + 1]})})
        rep = NightlyJob(spark, staged).run(D0)
        assert [(r.stage, r.status) for r in rep.records] == [(stage, SUCCEEDED)], rep.summary()
        run_ids.append(rep.run_id)
    yield World(main, snapshots, run_ids)
    ray.shutdown()


def _runs(spark, conf: Config) -> pd.DataFrame:
    return lakehouse.read_table(spark, conf, PIPELINE_RUNS).toPandas()


# ---- a whole night, and a rerun of it -------------------------------------------------------------------------
def test_a_night_records_every_stage_with_real_counts(spark, world):
    conf = world.main
    runs = _runs(spark, conf)
    d0 = runs[runs["ds"] == D0].set_index("stage")
    assert sorted(d0.index) == sorted(ORDER) and set(d0["status"]) == {SUCCEEDED}
    # Four invocations, each resuming after the stages the previous ones finished.
    assert [d0.loc[s, "run_id"] for s in ORDER] == world.run_ids
    n_events = lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date") == F.lit(D0)).count()
    assert d0.loc["migrate", "rows_in"] == n_events > 0
    assert d0.loc["embed_items", "rows_out"] == lakehouse.read_table(spark, conf, ITEM_TEXT_EMBEDDINGS).count() == 40
    recs = lakehouse.read_table(spark, conf, RECOMMENDATIONS).where(F.col("ds") == F.lit(D0))
    assert d0.loc["topk", "rows_out"] == recs.count() > 0
    assert d0.loc["topk", "rows_in"] == recs.select("user_id").distinct().count()
    # The first model is promoted (nothing to compare with) and serves its own night.
    assert d0.loc["train", "model_version"] == d0.loc["topk", "model_version"] == 1
    reg = lakehouse.read_table(spark, conf, MODEL_REGISTRY).where(F.col("version") == 1).first()
    assert reg["trained_through"] == D0 and reg["is_current"]
    assert (d0["seconds"] > 0).all() and d0["finished_at"].notna().all()


def test_rerunning_a_finished_night_changes_nothing(spark, world):
    before = _versions(spark, world.main)
    report = NightlyJob(spark, world.main).run(D0)
    assert report.records == [] and report.failed is None
    assert _versions(spark, world.main) == before
    assert "nothing to do" in report.summary()


def test_a_forced_rerun_serves_the_model_that_served_the_night(spark, world, tmp_path):
    conf = _conf(tmp_path / "lh")
    shutil.copytree(world.main.lakehouse.root, conf.lakehouse.root, ignore=COPY_IGNORE)
    report = NightlyJob(spark, conf).run(D0, force=True)
    assert [(r.stage, r.status) for r in report.records] == [(s, SUCCEEDED) for s in ORDER], report.summary()
    by_stage = {r.stage: r.result for r in report.records}
    assert by_stage["train"].model_version == by_stage["topk"].model_version == 1
    assert by_stage["train"].detail.startswith(f"kept model v1, which served {D0}")
    # No model trained or promoted: the registry is as the first run left it.
    reg = lakehouse.read_table(spark, conf, MODEL_REGISTRY).toPandas()
    assert reg["version"].tolist() == [1] and reg["is_current"].tolist() == [True]
    night = F.col("ds") == F.lit(D0)
    _assert_same(_frame(spark, conf, RECOMMENDATIONS, night), _frame(spark, world.main, RECOMMENDATIONS, night),
                 "recommendations")


def test_retrain_goes_with_force_and_trains_again(spark, world):
    import argparse

    from jobs.nightly import add_arguments, dates_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit, match="--retrain goes with --force"):
        dates_from_args(parser.parse_args(["--date", D0.isoformat(), "--retrain"]))
    args = parser.parse_args(["--date", D0.isoformat(), "--force", "--retrain"])
    assert dates_from_args(args) == (D0, D0) and args.retrain
    # What each stage would do: the night's version kept (train not run, top-k pinned), unless told otherwise.
    job = NightlyJob(spark, world.main)
    kept = job._work(D0, "train", 1)()
    assert kept.model_version == 1 and kept.rows_out == 0
    assert job.stage_conf("topk", 1).topk.model_version == 1
    assert job.stage_conf("topk", None).topk.model_version is None  # --retrain, or a first run: the current model
    pinned = world.main.model_copy(update={"topk": world.main.topk.model_copy(update={"model_version": 7})})
    assert NightlyJob(spark, pinned).stage_conf("topk", 1).topk.model_version == 7  # an explicit version wins
    from driftrec.stage_runs import served_version

    assert served_version(spark, world.main, D0) == 1 and served_version(spark, world.main, D1) is None


# ---- the lock -------------------------------------------------------------------------------------------------
@pytest.mark.heavy  # a child process with its own Spark session, then a forced whole night
def test_a_second_run_on_the_same_lakehouse_is_refused_until_the_first_ends(spark, world):
    root = world.main.lakehouse.root
    holder = subprocess.Popen(  # another process, with its own Spark session, holding the lakehouse's run lock
        [sys.executable, "-c",
         "import time; from driftrec.config import load_config; from driftrec.spark import build_spark\n"
         "from driftrec.runlock import RunLock\n"
         f"conf = load_config(overrides=['lakehouse.root=\"{root}\"', 'spark.shuffle_partitions=2'])\n"
         "with RunLock(build_spark(conf, app_name='holder', local=True), conf, 'holder-run'):\n"
         "    print('locked', flush=True); time.sleep(300)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    probe = RunLock(spark, world.main, "probe")
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _versions(spark, world.main)
        with pytest.raises(PipelineLocked, match=r"another nightly run is active.*holder-run.*pid "
                                                 rf"{holder.pid} on {socket.gethostname()}"):
            NightlyJob(spark, world.main).run(D0, force=True)
        assert _versions(spark, world.main) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: the kernel dropped its flock, and the next run takes over (its owner record
    # names the killed run).
    assert probe.holder() is None
    assert NightlyJob(spark, world.main).run(D0).records == []
    assert probe.holder() is None


def test_a_lock_is_exclusive_and_released(spark, tmp_path):
    conf = make_conf(tmp_path)
    with RunLock(spark, conf, "a"):
        with pytest.raises(PipelineLocked, match="run a"):
            with RunLock(spark, conf, "b"):
                pass
    with RunLock(spark, conf, "b") as lock:  # released by the first
        assert lock.holder()["run_id"] == "b" and lock.holder()["token"] == lock.token
    assert RunLock(spark, conf, "c").holder() is None


# ---- a bad model checkpoint -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", pytest.param("missing", marks=pytest.mark.heavy)])
def test_a_bad_checkpoint_fails_training_and_keeps_the_current_model(spark, world, tmp_path, damage):
    root = tmp_path / "lh"
    shutil.copytree(world.main.lakehouse.root, root, ignore=COPY_IGNORE)
    conf = _conf(root, 'pipeline.stages=["train", "topk"]')
    cur = registry.current(spark, conf, conf.training.model_name)
    local = root / "damaged" / Path(cur["checkpoint"]).name
    shutil.copytree(cur["checkpoint"], local)  # the copy's registry row is repointed at a private copy to damage
    DeltaTable.forPath(spark, conf.table_path("model_registry")).update(
        F.col("version") == cur["version"], {"checkpoint": F.lit(str(local))})
    if damage == "truncated":
        weights = local / WEIGHTS
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        shutil.rmtree(local)
    before = {s.logical: lakehouse.table_version(spark, conf, s) for s in (MODEL_REGISTRY, TRAINING_SEQUENCES)}

    report = NightlyJob(spark, conf).run(D1)
    assert [(r.stage, r.status) for r in report.records] == [("train", FAILED)]  # top-k never ran
    detail = report.failed.result.detail
    assert detail.startswith("CheckpointError") and str(local) in detail
    assert f"v{cur['version']} stays current" in detail
    assert ("unreadable" if damage == "truncated" else "missing") in detail
    # Nothing written: the registry and tonight's training sequences are as they were.
    assert {s.logical: lakehouse.table_version(spark, conf, s) for s in (MODEL_REGISTRY, TRAINING_SEQUENCES)} \
        == before
    assert registry.current(spark, conf, conf.training.model_name)["version"] == cur["version"]
    runs = _runs(spark, conf)
    assert runs[(runs["ds"] == D1) & (runs["stage"] == "train")]["status"].tolist() == [FAILED]
    # The next run resumes at the failed stage (and fails the same way until the checkpoint is repaired).
    again = NightlyJob(spark, conf).run(D1)
    assert [(r.stage, r.status) for r in again.records] == [("train", FAILED)]


# ---- kill a stage in the middle of its write ------------------------------------------------------------------
# Tables each stage writes, and the one whose write is interrupted.
def _migration_specs() -> list[TableSpec]:
    return [*MIGRATION_STATE_TABLES, DRIFT_PARAMS, USER_DRIFT]


KILL_TARGET = {
    "migrate": _migration_specs(),
    "embed_items": [ITEM_TEXT_EMBEDDINGS],
    "train": [MODEL_REGISTRY],
    "topk": [RECOMMENDATIONS],
}


def _data_files(table_dir: Path) -> set[str]:
    return {str(p.relative_to(table_dir)) for p in table_dir.rglob("*")
            if p.is_file() and "_delta_log" not in p.parts and p.suffix == ".parquet"}


_COMMIT_ADDS: dict[Path, set[str]] = {}  # a commit file never changes once it exists: read each one once


def _referenced(table_dir: Path) -> set[str]:
    """Data files some commit of the table added (its whole history, not only the current snapshot)."""
    import json
    from urllib.parse import unquote

    paths = set()
    for commit in (table_dir / "_delta_log").glob("*.json"):
        if commit not in _COMMIT_ADDS:
            adds = set()
            for line in commit.read_text().splitlines():
                action = json.loads(line) if line.strip() else {}
                if "add" in action:
                    adds.add(unquote(action["add"]["path"]))
            _COMMIT_ADDS[commit] = adds
        paths |= _COMMIT_ADDS[commit]
    return paths


def _unreferenced(table_dir: Path) -> set[str]:
    return _data_files(table_dir) - _referenced(table_dir) if (table_dir / "_delta_log").exists() else set()


def _kill_mid_write(cmd: list[str], dirs: list[Path], need_other_commit: bool, log: Path,
                    timeout: float = 900) -> Path:
    """Run ``cmd``; the moment one of ``dirs`` holds a data file no commit references (written, not committed),
    stop the process group (SIGSTOP: it cannot commit any more), check again, and SIGKILL it. For the migration
    engine, wait until another of its tables has committed new data first: a batch half committed. Returns the
    interrupted table."""
    committed0 = {d: _referenced(d) if (d / "_delta_log").exists() else set() for d in dirs}
    out = log.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            for d in dirs:
                if not _unreferenced(d):
                    continue
                others = any(_referenced(o) - committed0[o] for o in dirs if o != d and (o / "_delta_log").exists())
                if others or not need_other_commit:
                    os.killpg(proc.pid, signal.SIGSTOP)
                    if _unreferenced(d):
                        return d
                    os.killpg(proc.pid, signal.SIGCONT)
            if proc.poll() is not None:
                tail = log.read_text()[-3000:]
                raise AssertionError(f"the child ended (rc {proc.returncode}) before a write could be interrupted; "
                                     f"its output ends:\n{tail}")
            time.sleep(0.005)
        raise AssertionError("no write to interrupt within the timeout")
    finally:
        out.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)  # anything left in its session (Ray)


def _frame(spark, conf: Config, spec: TableSpec, where=None) -> pd.DataFrame:
    df = lakehouse.read_table(spark, conf, spec)
    if where is not None:
        df = df.where(where)
    cols = [f.name for f in spec.schema.fields if not isinstance(f.dataType, T.TimestampType)]
    pdf = df.select(*cols).toPandas()
    keys = [c for c in cols if not isinstance(spec.schema[c].dataType, (T.ArrayType, T.MapType, T.DoubleType,
                                                                        T.FloatType))]
    return pdf.sort_values(keys).reset_index(drop=True)


def _assert_same(left: pd.DataFrame, right: pd.DataFrame, what: str) -> None:
    assert len(left) == len(right), f"{what}: {len(left)} rows, expected {len(right)}"
    for col in left.columns:
        a, b = left[col].tolist(), right[col].tolist()
        if left[col].dtype.kind == "f":
            assert np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=1e-9, equal_nan=True), \
                f"{what}.{col} differs"
        else:
            norm = (lambda v: [list(x) if hasattr(x, "__len__") and not isinstance(x, str) else x for x in v])
            assert norm(a) == norm(b), f"{what}.{col} differs"


@pytest.mark.heavy
@pytest.mark.parametrize("stage", ORDER)
def test_a_stage_killed_mid_write_reruns_to_the_same_tables(spark, world, tmp_path, stage):
    root = tmp_path / "lh"
    shutil.copytree(world.snapshots[stage], root, ignore=COPY_IGNORE)
    conf = _conf(root, _stages_through(stage))
    targets = KILL_TARGET[stage]
    dirs = [Path(conf.table_path(s.logical)) for s in targets]
    cmd = [sys.executable, "-m", "jobs.cli", "nightly", "--date", D0.isoformat(), "--lakehouse", str(root),
           "--set", 'lakehouse.catalog="session"', "--set", "spark.shuffle_partitions=2",
           "--set", 'spark.driver_memory="2g"', "--set", _stages_through(stage)]
    for o in OVERRIDES:
        cmd += ["--set", o]
    hit = _kill_mid_write(cmd, dirs, need_other_commit=(stage == "migrate"), log=tmp_path / "child.log")

    # Killed between writing data files and committing them: the files are on disk, no table version has them.
    spec = targets[dirs.index(hit)]
    current = {Path(f).name for f in lakehouse.read_table(spark, conf, spec).inputFiles()}
    orphans = _unreferenced(hit)
    assert orphans and not {Path(f).name for f in orphans} & current
    runs = _runs(spark, conf)
    attempt = runs[(runs["ds"] == D0) & (runs["stage"] == stage)]
    assert attempt["status"].tolist() == [RUNNING]  # the killed attempt never finished

    report = NightlyJob(spark, conf).run(D0)
    assert [(r.stage, r.status) for r in report.records] == [(stage, SUCCEEDED)], report.summary()
    # The rerun took over the killed run's lock and marked its unfinished attempt failed (issue 20).
    runs = _runs(spark, conf)
    killed = runs[(runs["ds"] == D0) & (runs["stage"] == stage) & (runs["run_id"] != report.run_id)]
    assert killed["status"].tolist() == [FAILED] and killed["detail"].iloc[0].startswith("abandoned: run ")

    ref = world.main
    if stage == "migrate":
        for s in _migration_specs():
            _assert_same(_frame(spark, conf, s), _frame(spark, ref, s), s.logical)
    elif stage == "embed_items":
        _assert_same(_frame(spark, conf, ITEM_TEXT_EMBEDDINGS), _frame(spark, ref, ITEM_TEXT_EMBEDDINGS),
                     "item_text_embeddings")
    elif stage == "train":
        reg, ref_reg = (lakehouse.read_table(spark, c, MODEL_REGISTRY).toPandas() for c in (conf, ref))
        assert sorted(reg["version"]) == sorted(ref_reg["version"]) == [1]  # nothing left by the killed attempt
        assert int(reg["is_current"].sum()) == 1
        assert sorted(reg["trained_through"]) == sorted(ref_reg["trained_through"])
        seq = F.col("ds") == F.lit(D0)
        _assert_same(_frame(spark, conf, TRAINING_SEQUENCES, seq), _frame(spark, ref, TRAINING_SEQUENCES, seq),
                     "training_sequences")
    else:
        night = F.col("ds") == F.lit(D0)
        got = _frame(spark, conf, RECOMMENDATIONS, night)
        _assert_same(got, _frame(spark, ref, RECOMMENDATIONS, night), "recommendations")
        assert not got.duplicated(["user_id", "rank"]).any()


# ---- late events ----------------------------------------------------------------------------------------------
def _add_late_event(spark, conf: Config, day: dt.date) -> None:
    """One more event on ``day`` for a user and item that exist, arriving now."""
    from tests.transfer_helpers import events_frame

    row = lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date") == F.lit(day)).orderBy("event_id").first()
    ts = int(dt.datetime.combine(day, dt.time(23, 50), dt.UTC).timestamp())
    late = pd.DataFrame([{"user_id": row["user_id"], "item_id": row["item_id"], "event_type": row["event_type"],
                          "timestamp": ts, "weight": 1.0}])
    lakehouse.append(spark, conf, EVENTS, events_frame(spark, late))


@pytest.fixture(scope="module")
def ontime(spark, world, tmp_path_factory) -> Config:
    """The late-event scenario's reference: the same extra event for D0, stored before D0 was processed at all,
    then the nights D0 and D1 migrated."""
    from jobs.migrate import MigrationJob

    conf = _conf(tmp_path_factory.mktemp("ontime") / "lh", 'pipeline.stages=["migrate"]')
    shutil.copytree(world.snapshots["migrate"], conf.lakehouse.root, ignore=COPY_IGNORE)
    _add_late_event(spark, conf, D0)
    MigrationJob(spark, conf).run(D0)
    MigrationJob(spark, conf).run(D1)
    return conf


@pytest.mark.heavy
def test_late_events_inside_the_window_end_as_if_they_had_come_on_time(spark, world, ontime, tmp_path):
    migrate_only = 'pipeline.stages=["migrate"]'
    # Late: D0 processed, then an event for D0 arrives; the next night (D1) finds it and recomputes D0 first.
    late = _conf(tmp_path / "late", migrate_only)
    shutil.copytree(world.main.lakehouse.root, late.lakehouse.root, ignore=COPY_IGNORE)
    _add_late_event(spark, late, D0)
    (rec,) = NightlyJob(spark, late).run(D1).records
    assert rec.status == SUCCEEDED and rec.result.detail.startswith("2 night(s); recomputed " + str(D0)), rec
    # On time: the same event stored before D0 was processed at all.
    for s in _migration_specs():
        _assert_same(_frame(spark, late, s), _frame(spark, ontime, s), s.logical)
    counted = lakehouse.read_table(spark, late, DRIFT_PARAMS).where(F.col("ds") == F.lit(D0)).first()["n_events"]
    assert counted == lakehouse.read_table(spark, late, EVENTS).where(F.col("event_date") == F.lit(D0)).count()


def test_late_events_are_found_only_inside_the_window(spark, world, tmp_path):
    from jobs.migrate import MigrationJob

    conf = _conf(tmp_path / "late")
    shutil.copytree(world.main.lakehouse.root, conf.lakehouse.root, ignore=COPY_IGNORE)
    job = MigrationJob(spark, conf)
    n = lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date") == F.lit(D0)).count()
    assert job.changed_nights(START, D1) == {}
    _add_late_event(spark, conf, D0)
    assert job.changed_nights(START, D1) == {D0: (n, n + 1)}
    assert job.changed_nights(D1, D1) == {}  # outside a window that starts after it: kept, not replayed
    assert lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date") == F.lit(D0)).count() == n + 1


# ---- a stage launched on its own (a scheduler, `driftrec <stage>`) behaves and records itself the same ---------
def _flags(conf: Config) -> list[str]:
    """The command-line flags that give a standalone launch ``conf`` (same lakehouse, database, overrides)."""
    flags = ["--lakehouse", str(conf.lakehouse.root), "--set", f'lakehouse.database="{conf.lakehouse.database}"',
             "--set", "spark.shuffle_partitions=2"]
    for o in OVERRIDES:
        flags += ["--set", o]
    return flags


def _row(spark, conf: Config, ds: dt.date, stage: str) -> pd.Series:
    runs = _runs(spark, conf)
    rows = runs[(runs["ds"] == ds) & (runs["stage"] == stage)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.mark.heavy  # one more whole migration night through the command line
def test_driftrec_migrate_records_the_row_the_nightly_records(spark, world, tmp_path):
    from jobs.cli import main

    conf = _conf(tmp_path / "lh")
    shutil.copytree(world.snapshots["migrate"], conf.lakehouse.root, ignore=COPY_IGNORE)
    assert main(["migrate", "--date", D0.isoformat(), "--run-id", "scheduler-run-7", *_flags(conf)]) == 0

    got, nightly = _row(spark, conf, D0, "migrate"), _row(spark, world.main, D0, "migrate")
    assert got["run_id"] == "scheduler-run-7" and got["status"] == SUCCEEDED
    n_events = lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date") == F.lit(D0)).count()
    assert got["rows_in"] == nightly["rows_in"] == n_events > 0
    assert got["rows_out"] == nightly["rows_out"] > 0
    assert got["detail"] == nightly["detail"] and got["detail"].startswith(f"1 night(s); migrate {D0}: ")
    assert got["seconds"] > 0 and pd.notna(got["finished_at"]) and pd.isna(got["model_version"])
    for s in _migration_specs():
        _assert_same(_frame(spark, conf, s), _frame(spark, world.main, s), s.logical)
    # A nightly run of the same date sees the stage done and resumes after it.
    assert NightlyJob(spark, conf).plan([D0]) == [(D0, ORDER[1:])]


@pytest.mark.heavy
def test_the_standalone_migrate_job_replays_late_events_inside_the_window(spark, world, ontime, tmp_path):
    from jobs import migrate

    late = _conf(tmp_path / "late")
    shutil.copytree(world.main.lakehouse.root, late.lakehouse.root, ignore=COPY_IGNORE)
    _add_late_event(spark, late, D0)
    assert migrate.entrypoint(["--date", D1.isoformat(), *_flags(late)]) == 0  # what the Airflow task runs

    for s in _migration_specs():
        _assert_same(_frame(spark, late, s), _frame(spark, ontime, s), s.logical)
    row = _row(spark, late, D1, "migrate")
    assert row["status"] == SUCCEEDED and row["run_id"] not in world.run_ids
    assert row["detail"].startswith(f"2 night(s); recomputed {D0} ")
    both = lakehouse.read_table(spark, late, EVENTS).where(F.col("event_date").isin(D0, D1)).count()
    assert row["rows_in"] == both  # both nights' events, the late one included


def test_a_standalone_stage_that_fails_records_the_failure_and_raises(spark, tmp_path):
    from jobs import embed_items

    conf = _conf(tmp_path / "empty")
    with pytest.raises(RuntimeError, match="no items table"):
        embed_items.entrypoint(["--date", D0.isoformat(), *_flags(conf)])
    row = _row(spark, conf, D0, "embed_items")
    assert row["status"] == FAILED and row["detail"] == "RuntimeError: no items table: run the ingest job first"
    assert row["run_id"] and pd.notna(row["finished_at"])
