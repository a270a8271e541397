"""The whole night in one command: migrate -> embed_items -> train -> topk for a date, or each date of a range.

Every stage is idempotent on its own (see each job); this job adds the bookkeeping around them:

- ``pipeline_runs`` gets a row per stage attempt (status, rows in/out, seconds, current model version), written
  when the stage starts and again when it ends, so a killed run leaves a ``running`` row behind.
- A rerun of a date skips the stages that already succeeded for it and resumes at the first one that did not;
  every stage after it runs again, since it reads what the resumed stage writes. ``force`` reruns all of them.
- One run per lakehouse at a time: :class:`driftrec.runlock.RunLock` (a one-commit Delta lock, atomic on every
  store Delta supports); a second run refuses, naming the owner. A lock whose owner process is gone (same host) or
  that is older than ``pipeline.lock_stale_hours`` is stale and taken over.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, registry
from driftrec.config import Config
from driftrec.jobargs import base_parser, config_from_args, parse_date
from driftrec.runlock import PipelineLocked, RunLock
from driftrec.tables import PIPELINE_RUNS

log = logging.getLogger("driftrec.nightly")

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


@dataclass
class StageResult:
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


@dataclass
class NightlyReport:
    run_id: str
    records: list[StageRecord] = field(default_factory=list)

    @property
    def failed(self) -> StageRecord | None:
        return next((r for r in self.records if r.status == FAILED), None)

    def summary(self) -> str:
        lines = [f"nightly run {self.run_id}:", f"  {'date':<10}  {'stage':<12} {'status':<10} {'rows in':>9} "
                 f"{'rows out':>9} {'seconds':>8}  model"]
        for r in self.records:
            res = r.result
            lines.append(
                f"  {r.ds}  {r.stage:<12} {r.status:<10} {_n(res.rows_in):>9} {_n(res.rows_out):>9} "
                f"{r.seconds:>8.1f}  {_n(res.model_version)}"
            )
        if not self.records:
            lines.append("  nothing to do: every stage already succeeded for these dates (--force reruns them)")
        return "\n".join(lines)


def _n(v) -> str:
    return "-" if v is None else str(v)


# ---- stages: each runs one job for a date and says what it read and wrote ------------------------------------
def _migrate(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    from jobs.migrate import MigrationJob

    job = MigrationJob(spark, conf)
    window = conf.pipeline.late_window_days
    changed = job.changed_nights(ds - dt.timedelta(days=window), ds - dt.timedelta(days=1)) if window else {}
    if changed:
        # Late events (or deletions) inside the window: rewind to the first changed night and replay it onwards, so
        # the state ends exactly as if the events had been there on time.
        first = min(changed)
        log.warning("events changed since these nights were processed (counted, stored): %s; recomputing from %s",
                    {str(d): v for d, v in changed.items()}, first)
        reports = job.backfill(first, ds)
    else:
        reports = job.run(ds)
    late = "; recomputed " + ", ".join(f"{d} ({a} -> {b} events)" for d, (a, b) in changed.items()) if changed else ""
    last = reports[-1]
    return StageResult(rows_in=sum(r.n_events for r in reports), rows_out=sum(r.n_users for r in reports),
                       detail=f"{len(reports)} night(s){late}; {last.summary()}")


def _embed_items(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    from jobs.embed_items import EmbedItemsJob

    rep = EmbedItemsJob(spark, conf).run()
    return StageResult(rows_in=rep.candidates, rows_out=rep.inserted + rep.updated, detail=rep.summary())


def _train(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    from jobs.train import TrainJob

    rep = TrainJob(spark, conf).run(ds)
    cur = registry.current(spark, conf, conf.training.model_name)
    return StageResult(rows_in=rep.metrics.get("valid_users"), rows_out=1,
                       model_version=int(cur["version"]) if cur is not None else None, detail=rep.summary())


def _topk(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    from jobs.topk import TopKJob

    rep = TopKJob(spark, conf).run(ds)
    return StageResult(rows_in=rep.users, rows_out=rep.rows, model_version=rep.model_version, detail=rep.summary())


STAGES = {"migrate": _migrate, "embed_items": _embed_items, "train": _train, "topk": _topk}


# ---- the job --------------------------------------------------------------------------------------------------
class NightlyJob:
    def __init__(self, spark: SparkSession, conf: Config, *, out=None):
        self.spark = spark
        self.conf = conf
        self.run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.out = out or sys.stdout

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def status(self, dates: list[dt.date]) -> dict[tuple[dt.date, str], str]:
        """Latest status per (date, stage) among ``dates``."""
        if not lakehouse.table_exists(self.spark, self.conf, PIPELINE_RUNS):
            return {}
        rows = (
            lakehouse.read_table(self.spark, self.conf, PIPELINE_RUNS)
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

    def plan(self, dates: list[dt.date], force: bool = False) -> list[tuple[dt.date, list[str]]]:
        """The stages each date still needs: from its first stage that has not succeeded to the end."""
        stages = list(self.conf.pipeline.stages)
        done = {} if force else self.status(dates)
        plan = []
        for ds in dates:
            todo = stages
            for i, stage in enumerate(stages):
                if done.get((ds, stage)) != SUCCEEDED:
                    todo = stages[i:]
                    break
            else:
                todo = []
            if todo:
                plan.append((ds, todo))
        return plan

    def _record(self, ds: dt.date, stage: str, status: str, started: dt.datetime, seconds: float | None,
                result: StageResult) -> None:
        row = {
            "run_id": self.run_id, "ds": ds, "stage": stage, "status": status,
            "rows_in": result.rows_in, "rows_out": result.rows_out, "seconds": seconds,
            "model_version": result.model_version, "detail": result.detail[:4000], "started_at": started,
            "finished_at": None if status == RUNNING else dt.datetime.now(dt.UTC).replace(tzinfo=None),
        }
        df = self.spark.createDataFrame([row], schema=PIPELINE_RUNS.schema)
        lakehouse.merge_upsert(self.spark, self.conf, PIPELINE_RUNS, df, update_when="true", metrics=False)

    def run(self, start: dt.date, end: dt.date | None = None, *, force: bool = False) -> NightlyReport:
        end = end or start
        if end < start:
            raise ValueError(f"empty date range: {start} > {end}")
        dates = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        report = NightlyReport(self.run_id)
        with RunLock(self.spark, self.conf, self.run_id):
            lakehouse.ensure_table(self.spark, self.conf, PIPELINE_RUNS)
            plan = self.plan(dates, force)
            for ds, todo in plan:
                skipped = [s for s in self.conf.pipeline.stages if s not in todo]
                if skipped:
                    self._say(f"{ds}: already succeeded, skipped: {', '.join(skipped)}")
                for i, stage in enumerate(todo, 1):
                    rec = self._run_stage(ds, stage, i, len(todo))
                    report.records.append(rec)
                    if rec.status == FAILED:
                        self._say(report.summary())
                        return report
        self._say(report.summary())
        return report

    def _run_stage(self, ds: dt.date, stage: str, i: int, n: int) -> StageRecord:
        self._say(f"\n=== {ds}  [{i}/{n}] {stage} ===")
        started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self._record(ds, stage, RUNNING, started, None, StageResult())
        t0 = time.perf_counter()
        try:
            result = STAGES[stage](self.spark, self.conf, ds)
        except Exception as e:
            seconds = time.perf_counter() - t0
            detail = f"{type(e).__name__}: {e}"
            log.error("stage %s for %s failed:\n%s", stage, ds, traceback.format_exc())
            self._record(ds, stage, FAILED, started, seconds, StageResult(detail=detail))
            self._say(f"FAILED {stage} for {ds} after {seconds:.1f}s: {detail}\n"
                      f"rerun the same command to resume at {stage}")
            return StageRecord(ds, stage, FAILED, seconds, StageResult(detail=detail))
        seconds = time.perf_counter() - t0
        self._record(ds, stage, SUCCEEDED, started, seconds, result)
        self._say(f"{stage} done in {seconds:.1f}s: {result.detail.splitlines()[0] if result.detail else ''}")
        return StageRecord(ds, stage, SUCCEEDED, seconds, result)


def add_arguments(parser) -> None:
    parser.add_argument("--date", type=parse_date, help="the night to run (YYYY-MM-DD)")
    parser.add_argument("--from", dest="start", type=parse_date, help="first night of a backfill")
    parser.add_argument("--to", dest="end", type=parse_date, help="last night of a backfill (inclusive)")
    parser.add_argument("--force", action="store_true", help="rerun stages that already succeeded")


def dates_from_args(args) -> tuple[dt.date, dt.date]:
    if args.date is not None and args.start is None and args.end is None:
        return args.date, args.date
    if args.date is None and args.start is not None and args.end is not None:
        return args.start, args.end
    raise SystemExit("driftrec nightly: give --date, or both --from and --to")


def run_from_args(spark: SparkSession, conf: Config, args) -> int:
    start, end = dates_from_args(args)
    try:
        report = NightlyJob(spark, conf).run(start, end, force=args.force)
    except PipelineLocked as e:
        print(f"driftrec nightly: {e}", file=sys.stderr)
        return 3
    return 1 if report.failed else 0


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the Spark master and (via config) Ray's address."""
    from driftrec.spark import build_spark

    parser = base_parser("Run every nightly stage for a date (or a range), resuming where a failed run stopped.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    dates_from_args(args)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(build_spark(conf, app_name="driftrec-nightly"), conf, args)


if __name__ == "__main__":
    sys.exit(entrypoint())
