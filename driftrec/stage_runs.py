"""Stage bookkeeping in ``pipeline_runs``: one row per attempt of a nightly stage, whatever launched it.

`driftrec nightly`, the standalone entry points (``jobs/<stage>.py``, ``driftrec <stage>``) and the Airflow DAG
all record through here, so a night's rows look the same however it ran, and a later `driftrec nightly` resumes
after stages a scheduler already finished. A row is written when the attempt starts (``running``: a killed
process leaves it behind) and again when it ends (``succeeded`` or ``failed`` with rows in/out, seconds, detail).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import PIPELINE_RUNS

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


@dataclass
class StageResult:
    """What a stage read and wrote; each job's ``run_stage`` says it the same way for every launcher."""

    rows_in: int | None = None
    rows_out: int | None = None
    model_version: int | None = None
    detail: str = ""


@dataclass
class StageRecord:
    ds: dt.date
    stage: str
    status: str
    seconds: float = 0.0
    result: StageResult = field(default_factory=StageResult)
    error: BaseException | None = None  # the exception of a failed attempt, for a caller that re-raises it


# Run ids this process minted, and the attempt keys it has recorded: an attempt of a minted id whose key this process
# has not written yet cannot have a row anywhere, so its first row needs no lookup.
_MINTED: set[str] = set()
_WRITTEN: set[tuple[str, dt.date, str]] = set()


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent launches."""
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    _MINTED.add(run_id)
    return run_id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _has_row(spark: SparkSession, conf: Config, run_id: str, ds: dt.date, stage: str) -> bool:
    if run_id in _MINTED and (run_id, ds, stage) not in _WRITTEN:
        return False
    key = (F.col("run_id") == F.lit(run_id)) & (F.col("ds") == F.lit(ds)) & (F.col("stage") == F.lit(stage))
    return not lakehouse.read_table(spark, conf, PIPELINE_RUNS).where(key).limit(1).isEmpty()


def record(spark: SparkSession, conf: Config, run_id: str, ds: dt.date, stage: str, status: str,
           started: dt.datetime, seconds: float | None, result: StageResult, *, starting: bool = False) -> None:
    """Upsert the attempt's row (keyed by run id, date and stage).

    ``starting``: the attempt's first row, whose key is new unless a launcher reuses a run id for a stage it already
    attempted (a retried scheduler task given the same ``--run-id``). A new key is appended: a one-row MERGE costs
    ~2.6 s of fixed Delta overhead, an append ~0.7 s, and every stage of every night pays it
    (``benchmarks/bench_delta_ops.py``). A run id this process minted needs no lookup for a key it has not written;
    any other id is looked up first (~1.2-2 s in all).
    """
    row = {
        "run_id": run_id, "ds": ds, "stage": stage, "status": status,
        "rows_in": result.rows_in, "rows_out": result.rows_out, "seconds": seconds,
        "model_version": result.model_version, "detail": result.detail[:4000], "started_at": started,
        "finished_at": None if status == RUNNING else _now(),
    }
    df = spark.createDataFrame([row], schema=PIPELINE_RUNS.schema)
    if starting and not _has_row(spark, conf, run_id, ds, stage):
        lakehouse.append(spark, conf, PIPELINE_RUNS, df)
    else:
        lakehouse.merge_upsert(spark, conf, PIPELINE_RUNS, df, update_when="true", metrics=False)
    _WRITTEN.add((run_id, ds, stage))


def fail_abandoned(spark: SparkSession, conf: Config, owner: dict | None, by_run: str) -> int:
    """Mark the ``running`` rows of ``owner``'s run failed: a run lock ``by_run`` took over from a holder that never
    released it (see :attr:`driftrec.runlock.RunLock.taken_over`), so that run was killed and its attempts ended
    with it. Only that run's rows: a stage launched on its own (no lock) may be running now. The rows changed."""
    if owner is None or not lakehouse.table_exists(spark, conf, PIPELINE_RUNS):
        return 0
    rows = (lakehouse.read_table(spark, conf, PIPELINE_RUNS)
            .where((F.col("run_id") == F.lit(owner["run_id"])) & (F.col("status") == F.lit(RUNNING))).collect())
    if not rows:
        return 0
    detail = (f"abandoned: run {owner['run_id']} (pid {owner['pid']} on {owner['host']}) ended without finishing; "
              f"run {by_run} took over its lock")
    failed = [{**r.asDict(), "status": FAILED, "detail": detail, "finished_at": _now()} for r in rows]
    lakehouse.merge_upsert(spark, conf, PIPELINE_RUNS, spark.createDataFrame(failed, schema=PIPELINE_RUNS.schema),
                           update_when="true", metrics=False)
    return len(rows)


def latest_status(spark: SparkSession, conf: Config, dates: list[dt.date]) -> dict[tuple[dt.date, str], str]:
    """Latest status per (date, stage) among ``dates``, across all run ids."""
    if not lakehouse.table_exists(spark, conf, PIPELINE_RUNS):
        return {}
    rows = (
        lakehouse.read_table(spark, conf, PIPELINE_RUNS)
        .where(F.col("ds").isin(dates))
        .select("ds", "stage", "status", "started_at")
        .collect()
    )
    latest: dict[tuple[dt.date, str], tuple] = {}
    for r in rows:
        key = (r["ds"], r["stage"])
        if key not in latest or r["started_at"] >= latest[key][0]:
            latest[key] = (r["started_at"], r["status"])
    return {k: v[1] for k, v in latest.items()}


def served_version(spark: SparkSession, conf: Config, ds: dt.date) -> int | None:
    """The model version that served night ``ds``: its latest succeeded ``topk`` attempt's, else (top-k never ran
    for it) its latest succeeded ``train`` attempt's; ``None`` for a night no stage recorded a model for."""
    if not lakehouse.table_exists(spark, conf, PIPELINE_RUNS):
        return None
    rows = (
        lakehouse.read_table(spark, conf, PIPELINE_RUNS)
        .where((F.col("ds") == F.lit(ds)) & (F.col("status") == SUCCEEDED) & F.col("stage").isin("topk", "train")
               & F.col("model_version").isNotNull())
        .select("stage", "model_version", "started_at")
        .collect()
    )
    for stage in ("topk", "train"):
        mine = [r for r in rows if r["stage"] == stage]
        if mine:
            return int(max(mine, key=lambda r: r["started_at"])["model_version"])
    return None


def attempt(spark: SparkSession, conf: Config, run_id: str, ds: dt.date, stage: str,
            work: Callable[[], StageResult]) -> StageRecord:
    """Run ``work`` as one recorded attempt. Its exception is recorded and returned on the record, not raised:
    the caller decides whether a failed stage stops a run (nightly) or the process (a standalone launch)."""
    lakehouse.ensure_table(spark, conf, PIPELINE_RUNS)
    started = _now()
    record(spark, conf, run_id, ds, stage, RUNNING, started, None, StageResult(), starting=True)
    t0 = time.perf_counter()
    try:
        result = work()
    except Exception as e:
        seconds = time.perf_counter() - t0
        failed = StageResult(detail=f"{type(e).__name__}: {e}")
        record(spark, conf, run_id, ds, stage, FAILED, started, seconds, failed)
        return StageRecord(ds, stage, FAILED, seconds, failed, error=e)
    seconds = time.perf_counter() - t0
    record(spark, conf, run_id, ds, stage, SUCCEEDED, started, seconds, result)
    return StageRecord(ds, stage, SUCCEEDED, seconds, result)


def run_recorded(spark: SparkSession, conf: Config, ds: dt.date, stage: str, work: Callable[[], StageResult],
                 run_id: str | None = None) -> StageResult:
    """A standalone launch of one stage: recorded under ``run_id`` (a new one by default); a failure is recorded,
    then re-raised."""
    rec = attempt(spark, conf, run_id or new_run_id(), ds, stage, work)
    if rec.error is not None:
        raise rec.error
    return rec.result
