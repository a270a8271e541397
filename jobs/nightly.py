"""The whole night in one command: migrate -> embed_items -> train -> topk for a date, or each date of a range.

Every stage is idempotent on its own (see each job); this job adds the bookkeeping around them:

- ``pipeline_runs`` gets a row per stage attempt (status, rows in/out, seconds, current model version), written
  when the stage starts and again when it ends, so a killed run leaves a ``running`` row behind. The bookkeeping is
  :mod:`driftrec.stage_runs` and each stage's own ``run_stage``: a stage launched on its own records the same row.
- A rerun of a date skips the stages that already succeeded for it and resumes at the first one that did not;
  every stage after it runs again, since it reads what the resumed stage writes. ``force`` reruns all of them.
- A forced rerun of a night that already served a model reproduces it: training keeps the version that served the
  night (:func:`driftrec.stage_runs.served_version`) instead of training and promoting a new one, and top-k serves
  that version. ``retrain`` trains (and may promote) a new model as a first run would.
- One run per lakehouse at a time: :class:`driftrec.runlock.RunLock` (a flock on local roots, a one-commit Delta
  lock on others); a second run refuses, naming the owner. A lock whose owner process is gone is taken over (on
  other roots also one taken on another host longer than ``pipeline.lock_stale_hours`` ago), and the killed run's
  ``running`` stage rows are marked failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from driftrec import lakehouse, stage_runs
from driftrec.config import Config
from driftrec.jobargs import base_parser, config_from_args, parse_date
from driftrec.spark import build_spark
from driftrec.stage_runs import FAILED, RUNNING, SUCCEEDED, StageRecord, StageResult  # noqa: F401 (re-exported)
from driftrec.runlock import PipelineLocked, RunLock
from driftrec.tables import PIPELINE_RUNS
from jobs import embed_items, migrate

log = logging.getLogger("driftrec.nightly")


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


# ---- stages: each job's own ``run_stage`` runs it for a date and says what it read and wrote -------------------
def _train(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    from jobs import train  # lazily: torch, only for a run that trains

    return train.run_stage(spark, conf, ds)


def _topk(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    from jobs import topk  # lazily: torch, only for a run that scores

    return topk.run_stage(spark, conf, ds)


STAGES = {"migrate": migrate.run_stage, "embed_items": embed_items.run_stage, "train": _train, "topk": _topk}


# ---- the job --------------------------------------------------------------------------------------------------
class NightlyJob:
    def __init__(self, spark: SparkSession, conf: Config, *, out=None):
        self.spark = spark
        self.conf = conf
        self.run_id = stage_runs.new_run_id()
        self.out = out or sys.stdout

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def status(self, dates: list[dt.date]) -> dict[tuple[dt.date, str], str]:
        """Latest status per (date, stage) among ``dates``, whichever launcher recorded it."""
        return stage_runs.latest_status(self.spark, self.conf, dates)

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

    def run(self, start: dt.date, end: dt.date | None = None, *, force: bool = False,
            retrain: bool = False) -> NightlyReport:
        end = end or start
        if end < start:
            raise ValueError(f"empty date range: {start} > {end}")
        dates = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        report = NightlyReport(self.run_id)
        with RunLock(self.spark, self.conf, self.run_id) as lock:
            lakehouse.ensure_table(self.spark, self.conf, PIPELINE_RUNS)
            stage_runs.fail_abandoned(self.spark, self.conf, lock.taken_over, self.run_id)
            plan = self.plan(dates, force)
            for ds, todo in plan:
                skipped = [s for s in self.conf.pipeline.stages if s not in todo]
                if skipped:
                    self._say(f"{ds}: already succeeded, skipped: {', '.join(skipped)}")
                kept = stage_runs.served_version(self.spark, self.conf, ds) if force and not retrain else None
                for i, stage in enumerate(todo, 1):
                    rec = self._run_stage(ds, stage, i, len(todo), kept)
                    report.records.append(rec)
                    if rec.status == FAILED:
                        self._say(report.summary())
                        return report
        self._say(report.summary())
        return report

    def _work(self, ds: dt.date, stage: str, kept: int | None):
        """The stage's work; with ``kept`` (the version that served ``ds`` before a forced rerun) training keeps it
        instead of training a new model, and top-k serves it (:meth:`stage_conf`): the rerun reproduces the night."""
        if kept is not None and stage == "train":
            return lambda: StageResult(rows_out=0, model_version=kept, detail=(
                f"kept model v{kept}, which served {ds}: a forced rerun reproduces the night (--retrain trains anew)"))
        conf = self.stage_conf(stage, kept)
        return lambda: STAGES[stage](self.spark, conf, ds)

    def stage_conf(self, stage: str, kept: int | None) -> Config:
        """The configuration a stage runs with: top-k pinned to ``kept`` unless ``topk.model_version`` names one."""
        if kept is not None and stage == "topk" and self.conf.topk.model_version is None:
            return self.conf.model_copy(update={"topk": self.conf.topk.model_copy(update={"model_version": kept})})
        return self.conf

    def _run_stage(self, ds: dt.date, stage: str, i: int, n: int, kept: int | None = None) -> StageRecord:
        self._say(f"\n=== {ds}  [{i}/{n}] {stage} ===")
        rec = stage_runs.attempt(self.spark, self.conf, self.run_id, ds, stage, self._work(ds, stage, kept))
        if rec.status == FAILED:
            log.error("stage %s for %s failed:\n%s", stage, ds,
                      "".join(traceback.format_exception(rec.error)))
            self._say(f"FAILED {stage} for {ds} after {rec.seconds:.1f}s: {rec.result.detail}\n"
                      f"rerun the same command to resume at {stage}")
        else:
            detail = rec.result.detail
            self._say(f"{stage} done in {rec.seconds:.1f}s: {detail.splitlines()[0] if detail else ''}")
        return rec


def add_arguments(parser) -> None:
    parser.add_argument("--date", type=parse_date, help="the night to run (YYYY-MM-DD)")
    parser.add_argument("--from", dest="start", type=parse_date, help="first night of a backfill")
    parser.add_argument("--to", dest="end", type=parse_date, help="last night of a backfill (inclusive)")
    parser.add_argument("--force", action="store_true",
                        help="rerun stages that already succeeded; a night keeps the model version that served it")
    parser.add_argument("--retrain", action="store_true",
                        help="with --force: train (and maybe promote) a new model instead of keeping the night's")


def dates_from_args(args) -> tuple[dt.date, dt.date]:
    if getattr(args, "retrain", False) and not args.force:
        raise SystemExit("driftrec nightly: --retrain goes with --force (a first run of a night trains anyway)")
    if args.date is not None and args.start is None and args.end is None:
        return args.date, args.date
    if args.date is None and args.start is not None and args.end is not None:
        return args.start, args.end
    raise SystemExit("driftrec nightly: give --date, or both --from and --to")


def run_from_args(spark: SparkSession, conf: Config, args) -> int:
    start, end = dates_from_args(args)
    try:
        report = NightlyJob(spark, conf).run(start, end, force=args.force, retrain=args.retrain)
    except PipelineLocked as e:
        print(f"driftrec nightly: {e}", file=sys.stderr)
        return 3
    return 1 if report.failed else 0


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the Spark master and (via config) Ray's address."""
    parser = base_parser("Run every nightly stage for a date (or a range), resuming where a failed run stopped.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    dates_from_args(args)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(build_spark(conf, app_name="driftrec-nightly"), conf, args)


if __name__ == "__main__":
    sys.exit(entrypoint())
