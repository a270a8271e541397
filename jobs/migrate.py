"""Nightly interest-migration job: ``events`` of one date + stored state -> transitions, interest, drift.

Nights run in batches: a nightly run is a batch of one night, a backfill is split into batches of
``migration.commit_every_nights`` (fewer when they reach ``migration.stage_max_events``). A batch reads only its dates' ``events`` partitions and the state tables pinned
at their versions before the batch, stages each night's changes in memory (:mod:`driftrec.migration.state`), and
commits once per table at the end. ``migration_runs`` is the watermark: it logs each batch's nights with the table
versions before it, as 'started' before the commits and 'finished' after them. Rerunning a processed night restores
the versions before its batch and recomputes from the batch's first night, which gives exactly the same tables; a
batch interrupted between 'started' and 'finished' is rolled back the same way by the next run. A rewind whose
versions were vacuumed away (some table cannot be restored), or that would go back past a forget-user's deletions
(restoring would bring the erased users' rows back), touches no table: it recomputes the state before the night
from the stored events with the one-pass rebuild instead (:meth:`MigrationJob._rewind`).

Under spark-submit::

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/migrate.py --date 2026-01-31
    spark-submit ... jobs/migrate.py --from 2026-01-01 --to 2026-01-31
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
import uuid
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import jobstats, lakehouse
from driftrec.categories import item_categories
from driftrec.config import Config
from driftrec.jobargs import add_run_id, base_parser, config_from_args, parse_date
from driftrec.migration import night
from driftrec.migration import transitions as tr
from driftrec.migration.state import StagedState, date_range, materialise
from driftrec.spark import build_spark, run_concurrently
from driftrec.stage_runs import StageResult, run_recorded
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    EVENTS,
    ITEM_POPULARITY,
    ITEM_TRANSITION_COUNTS,
    ITEM_TRANSITIONS,
    MIGRATION_RUNS,
    MIGRATION_TABLES,
    USER_DRIFT,
    USER_INTEREST,
    USER_LAST_EVENT,
    USER_TRANSITIONS,
)

log = logging.getLogger("driftrec.migrate")

# Tables a rerun or a recovery restores; migration_runs itself is among them, so the watermark rewinds too.
VERSIONED = MIGRATION_TABLES
STARTED, FINISHED = "started", "finished"


@dataclass(frozen=True)
class NightReport:
    ds: dt.date
    n_events: int
    n_users: int
    a: float
    b: float
    method: str
    log_likelihood: float | None

    def summary(self) -> str:
        ll = "n/a" if self.log_likelihood is None else f"{self.log_likelihood:.2f}"
        return (
            f"migrate {self.ds}: {self.n_events} events, {self.n_users} users moved, "
            f"a={self.a:.3f} b={self.b:.3f} ({self.method}, log-likelihood {ll})"
        )


@dataclass(frozen=True)
class NightRun:
    """One night as the ``migrate`` stage runs it: the nights computed, and those replayed for late events."""

    ds: dt.date
    reports: list[NightReport]
    replayed: dict[dt.date, tuple[int, int]]  # night -> (events counted, events stored) of each changed night

    def stage_result(self) -> StageResult:
        late = "; recomputed " + ", ".join(f"{d} ({a} -> {b} events)" for d, (a, b) in self.replayed.items()) \
            if self.replayed else ""
        return StageResult(rows_in=sum(r.n_events for r in self.reports),
                           rows_out=sum(r.n_users for r in self.reports),
                           detail=f"{len(self.reports)} night(s){late}; {self.reports[-1].summary()}")


class MigrationJob:
    def __init__(self, spark: SparkSession, conf: Config):
        self.spark = spark
        self.conf = conf
        self.m = conf.migration
        self._ready = False  # migration tables ensured (once per job, not per batch)
        self._log_cache: tuple[int, list] | None = None  # (migration_runs version, its rows)
        if (self.m.pin_a is None) != (self.m.pin_b is None):
            raise ValueError("migration.pin_a and migration.pin_b must be set together")
        for a, b, what in ((self.m.pin_a, self.m.pin_b, "pin"), (self.m.default_a, self.m.default_b, "default")):
            if a is not None and a + b > 1.0 + 1e-12:
                raise ValueError(f"migration.{what}_a + migration.{what}_b must be <= 1, got {a + b}")

    # ---- watermark -------------------------------------------------------------------------------------------
    @jobstats.grouped("migrate:watermark")
    def _log_rows(self) -> list:
        """The batch log: two rows per processed night, so it grows with nights, never with users or events.

        Read once per table version: a write by this job (:meth:`_log_batch`, :meth:`_rewind`) or anyone else moves
        the version, and checking it is a listing, not a query."""
        spark, conf = self.spark, self.conf
        version = lakehouse.table_versions(spark, conf, (MIGRATION_RUNS,), missing_ok=True)[MIGRATION_RUNS.logical]
        if version is None:
            return []
        if self._log_cache is None or self._log_cache[0] != version:
            rows = (
                lakehouse.read_table_at(spark, conf, MIGRATION_RUNS, version)
                .select("ds", "batch_id", "batch_start", "status", "state_versions")
                .collect()
            )
            self._log_cache = (version, rows)
        return self._log_cache[1]

    @jobstats.grouped("migrate:late_check")
    def changed_nights(self, start: dt.date, end: dt.date) -> dict[dt.date, tuple[int, int]]:
        """Processed nights in ``[start, end]`` that now hold more events than the night counted (late arrivals),
        as ``{night: (counted, stored)}``: they need recomputing.

        Compares each night's ``drift_params.n_events`` with a count of its event partition, so it costs a scan of
        the window's partitions only. Nights committed by a one-pass rebuild have no per-night count and are skipped.
        Fewer events (a forget-user deletion) do not count: replaying would restore state tables to versions from
        before the deletion, bringing the forgotten user's rows back.
        """
        spark, conf = self.spark, self.conf
        present = lakehouse.table_versions(spark, conf, (DRIFT_PARAMS, EVENTS), missing_ok=True)
        if present[DRIFT_PARAMS.logical] is None:
            return {}
        rebuilt = {r["ds"] for r in self._log_rows() if r["batch_id"].startswith("rebuild-")}
        lo, hi = tr.date_lit(start), tr.date_lit(end)
        both = (  # one collect: the nights' counts, and their partitions' counts now
            lakehouse.read_table(spark, conf, DRIFT_PARAMS).where(F.col("ds").between(lo, hi))
            .select(F.lit(True).alias("counted"), "ds", F.col("n_events").cast("long").alias("n"))
        )
        if present[EVENTS.logical] is not None:
            both = both.unionByName(
                lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date").between(lo, hi))
                .groupBy(F.col("event_date").alias("ds")).agg(F.count(F.lit(1)).alias("n"))
                .select(F.lit(False).alias("counted"), "ds", "n")
            )
        rows = both.collect()
        counted = {r["ds"]: int(r["n"]) for r in rows if r["counted"]}
        stored = {r["ds"]: int(r["n"]) for r in rows if not r["counted"]}
        return {d: (n, stored.get(d, 0)) for d, n in sorted(counted.items())
                if d not in rebuilt and stored.get(d, 0) > n}

    def processed_dates(self) -> list[dt.date]:
        return sorted({r["ds"] for r in self._log_rows() if r["status"] == FINISHED})

    @jobstats.grouped("migrate:restore")
    def _rewind(self, versions: dict[str, int], start: dt.date) -> None:
        """Put every migration table back to ``versions``, the state before night ``start``: all tables or none.

        Every table is checked before any is touched (:func:`lakehouse.restore_problem`: Delta's RESTORE needs the
        version's files, and a VACUUM, e.g. forget-user's, may have deleted them; and a version older than a
        forget-user's deletion must not come back, files or not). When one cannot be restored,
        nothing is restored and the state before ``start`` is recomputed from the stored events instead
        (:meth:`_recompute_before`); so is it when a restore fails after the check. A 'started' rewind row guards
        the restores: ``migration_runs`` is restored last, which drops the row, so a run killed in between leaves
        it and the next run finishes the rewind instead of trusting a log that still says the nights are done.
        """
        spark, conf = self.spark, self.conf
        before = lakehouse.table_versions(spark, conf, VERSIONED, missing_ok=True)
        todo = {spec.logical: int(v) for spec in VERSIONED
                if (v := versions.get(spec.logical)) is not None and before[spec.logical] != int(v)}
        self._log_cache = None
        if not todo:
            return
        threads = conf.spark.write_threads  # the tables are independent: check, then restore, them concurrently
        checked = [spec for spec in VERSIONED if spec.logical in todo]
        found = run_concurrently(spark, [functools.partial(lakehouse.restore_problem, spark, conf, spec,
                                                           todo[spec.logical]) for spec in checked], threads)
        problems = [problem for problem in found if problem is not None]
        if problems:
            self._recompute_before(start, "; ".join(problems), before)
            return
        if MIGRATION_RUNS.logical in versions:
            self._log_batch("rewind-" + uuid.uuid4().hex, [start], versions, STARTED)
            todo[MIGRATION_RUNS.logical] = int(versions[MIGRATION_RUNS.logical])  # the guard row moved it
        state = [spec for spec in VERSIONED if spec.logical in todo and spec.logical != MIGRATION_RUNS.logical]
        try:
            run_concurrently(spark, [functools.partial(lakehouse.restore_to, spark, conf, spec, todo[spec.logical])
                                     for spec in state], threads)
            if MIGRATION_RUNS.logical in todo:  # the log last: it drops the guard row
                lakehouse.restore_to(spark, conf, MIGRATION_RUNS, todo[MIGRATION_RUNS.logical])
        except Exception as e:  # noqa: BLE001 - some tables restored, some not: replace them all
            self._recompute_before(start, f"a restore failed after the check: {type(e).__name__}: {e}", before)
        self._log_cache = None

    @jobstats.grouped("migrate:recompute")
    def _recompute_before(self, start: dt.date, why: str, before: dict[str, int | None]) -> None:
        """The state before night ``start`` from the stored events, when the tables cannot be rewound to it.

        The one-pass rebuild through the night before ``start`` (:func:`driftrec.migration.bulk.build_state`)
        replaces every migration table, and the log becomes that rebuild alone, so the nights from ``start`` on are
        then computed like any others. The state may differ from the night-by-night one it replaces the way any
        rebuild does (one fitted ``(a, b)``, the prior as of the cutoff), never by a table left behind; with no
        events before ``start`` the state is empty. A 'started' row with the versions before this step (current
        ones, so restorable) guards it: the next run rolls a killed recompute back to them and tries again.
        """
        from driftrec.migration.bulk import build_state

        spark, conf = self.spark, self.conf
        cutoff = start - dt.timedelta(days=1)
        log.warning("cannot rewind the migration tables to before %s (%s): recomputing that state from the stored "
                    "events instead (one-pass rebuild through %s), then the nights from %s", start, why, cutoff,
                    start)
        self._log_batch("reset-" + uuid.uuid4().hex, [start],
                        {k: v for k, v in before.items() if v is not None}, STARTED)
        history = (lakehouse.read_table(spark, conf, EVENTS).where(F.col("event_date") <= tr.date_lit(cutoff))
                   if lakehouse.table_exists(spark, conf, EVENTS) else None)
        built = None
        if history is not None and history.limit(1).count():
            built = build_state(spark, self.m, history, item_categories(spark, conf), cutoff)
        self._write_state(built, cutoff)
        log_df = (self._log_frame("rebuild-" + uuid.uuid4().hex, [cutoff],
                                  {spec.logical: lakehouse.EMPTY_VERSION for spec in VERSIONED},
                                  (STARTED, FINISHED), built.first_day)
                  if built is not None else spark.createDataFrame([], MIGRATION_RUNS.schema))
        lakehouse.replace_where(spark, conf, MIGRATION_RUNS, log_df, "true", metrics=False)  # drops the guard row
        self._log_cache = None

    def _prepare(self, start: dt.date) -> dt.date:
        """Roll back an interrupted batch, then every batch holding a night >= ``start``; the first night to compute."""
        rows = self._log_rows()
        finished = {r["batch_id"] for r in rows if r["status"] == FINISHED}
        broken = [r for r in rows if r["status"] == STARTED and r["batch_id"] not in finished]
        if broken:
            first = min(broken, key=lambda r: r["ds"])
            log.warning("the migration batch from %s was interrupted: restoring the tables to before it", first["ds"])
            self._rewind(first["state_versions"], first["batch_start"])
            if not first["batch_id"].startswith("rebuild-"):  # its nights (a rewind's: done ones) are to compute
                start = min(start, first["ds"])
            rows = self._log_rows()
        later = [r for r in rows if r["status"] == FINISHED and r["ds"] >= start]
        if not later:
            return start
        first = min(later, key=lambda r: (r["batch_start"], r["ds"]))
        log.info("rewinding migration tables to before %s", first["batch_start"])
        self._rewind(first["state_versions"], first["batch_start"])
        if first["batch_start"] < start:
            log.info("recomputing from %s: the nights %s..%s were committed in one batch",
                     first["batch_start"], first["batch_start"], start)
        return min(start, first["batch_start"])

    def run(self, day: dt.date) -> list[NightReport]:
        """Process night ``day``. A rerun of the latest night replaces it exactly; nights missed since the watermark
        are caught up first (their events would otherwise never be counted)."""
        done = self.processed_dates()
        if done and day < done[-1]:
            raise ValueError(
                f"{day} is before the migration watermark {done[-1]}: rerun with backfill({day}, {done[-1]}) "
                "so the later nights are recomputed on top of it"
            )
        start = day
        if done and day > done[-1] + dt.timedelta(days=1):
            start = done[-1] + dt.timedelta(days=1)
            log.info("catching up the nights %s..%s since the watermark", start, day)
        return self._batches(self._prepare(start), day)

    def run_night(self, day: dt.date) -> NightRun:
        """The ``migrate`` stage for night ``day``, whatever launches it: :meth:`run`, after replaying late events.

        Processed nights of the previous ``pipeline.late_window_days`` that gained events since (late arrivals,
        :meth:`changed_nights`) are recomputed from the first of them onwards, so the state ends exactly as if the
        events had come on time. Older late events are kept but need an explicit backfill.
        """
        window = self.conf.pipeline.late_window_days
        changed = self.changed_nights(day - dt.timedelta(days=window), day - dt.timedelta(days=1)) if window else {}
        if not changed:
            return NightRun(day, self.run(day), {})
        first = min(changed)
        log.warning("events changed since these nights were processed (counted, stored): %s; recomputing from %s",
                    {str(d): v for d, v in changed.items()}, first)
        return NightRun(day, self.backfill(first, day), changed)

    def rebuild(self, cutoff: dt.date) -> NightReport:
        """The whole state as of ``cutoff`` from every stored event up to it, in one pass (:mod:`..bulk`).

        For a first load of a long history, or an evaluation cutoff: thousands of nights cost what one does. Refuses
        a lakehouse that already has processed nights (their state would be silently replaced); nightly runs continue
        from ``cutoff`` afterwards, and a backfill before it recomputes night by night from the first event.
        """
        from driftrec.migration.bulk import build_state

        spark, conf = self.spark, self.conf
        lakehouse.ensure_tables(spark, conf, MIGRATION_TABLES)
        self._ready = True
        if self.processed_dates():
            raise ValueError(
                f"migration state already holds nights up to {self.processed_dates()[-1]}: a rebuild would replace it;"
                " rebuild into a fresh lakehouse, or continue with --date/--from/--to"
            )
        versions = lakehouse.table_versions(spark, conf, VERSIONED)
        built = build_state(spark, self.m, lakehouse.read_table(spark, conf, EVENTS), item_categories(spark, conf),
                            cutoff)
        batch_id = "rebuild-" + uuid.uuid4().hex
        days = [cutoff]
        self._log_batch(batch_id, days, versions, STARTED, start=built.first_day)
        self._write_state(built, cutoff)
        self._log_batch(batch_id, days, versions, FINISHED, start=built.first_day)
        report = NightReport(cutoff, built.n_events, built.n_users, built.a, built.b, built.method,
                             built.log_likelihood)
        log.info("rebuilt through %s from %s: %s", cutoff, built.first_day, report.summary())
        return report

    def backfill(self, start: dt.date, end: dt.date) -> list[NightReport]:
        """Every night from ``start`` to ``end`` inclusive, in order (empty days included: decay advances)."""
        if end < start:
            raise ValueError(f"backfill range is empty: {start} > {end}")
        return self._batches(self._prepare(start), end)

    # ---- batches ---------------------------------------------------------------------------------------------
    def _batches(self, start: dt.date, end: dt.date) -> list[NightReport]:
        days = date_range(start, end)
        reports: list[NightReport] = []
        while len(reports) < len(days):
            reports += self._batch(days[len(reports) : len(reports) + self.m.commit_every_nights])
        return reports

    def _batch(self, days: list[dt.date]) -> list[NightReport]:
        """Run ``days`` in order, staged, and commit them; stops early (committing the nights done) once the batch
        holds ``migration.stage_max_events``: staged state is re-read by every later night, so on large nights a
        commit per night is cheaper than carrying it."""
        spark, conf = self.spark, self.conf
        with jobstats.job_group(spark, "migrate:setup"):
            if not self._ready:
                lakehouse.ensure_tables(spark, conf, MIGRATION_TABLES)
                self._ready = True
            versions = lakehouse.table_versions(spark, conf, VERSIONED)
            events_version = lakehouse.table_versions(spark, conf, (EVENTS,), missing_ok=True)[EVENTS.logical]
            state = StagedState(spark, conf, versions)
            item_cats = materialise(item_categories(spark, conf))  # the catalogue as of the batch
        reports: list[NightReport] = []
        for day in days:
            reports.append(self._night(day, state, item_cats, events_version))
            if sum(r.n_events for r in reports) >= self.m.stage_max_events:
                break
        done = [r.ds for r in reports]
        batch_id = uuid.uuid4().hex
        self._log_batch(batch_id, done, versions, STARTED)
        state.commit(done[0], done[-1])
        self._log_batch(batch_id, done, versions, FINISHED)
        return reports

    def _write_state(self, built, cutoff: dt.date) -> None:
        """Every state table and ``drift_params`` replaced by a one-pass state (``None``: emptied)."""
        spark, conf = self.spark, self.conf
        specs = (USER_TRANSITIONS, CATEGORY_TRANSITIONS, ITEM_TRANSITION_COUNTS, ITEM_TRANSITIONS, ITEM_POPULARITY,
                 USER_INTEREST, USER_LAST_EVENT, USER_DRIFT)
        frames = [(spec, getattr(built, spec.logical) if built is not None else spark.createDataFrame([], spec.schema))
                  for spec in specs]
        run_concurrently(spark, [
            functools.partial(lakehouse.replace_where, spark, conf, spec, df, "true", metrics=False)
            for spec, df in frames
        ], conf.spark.write_threads)
        rows = [] if built is None else [(cutoff, built.a, built.b, built.method, built.log_likelihood,
                                          built.log_likelihood_default, built.n_events, built.n_fit_events,
                                          built.n_users)]
        params = spark.createDataFrame(rows, night.PARAMS_SCHEMA).withColumn("finished_at", F.current_timestamp())
        lakehouse.replace_where(spark, conf, DRIFT_PARAMS, params, "true", metrics=False)

    def _log_frame(self, batch_id: str, days: list[dt.date], versions: dict[str, int], statuses: tuple[str, ...],
                   start: dt.date | None = None) -> DataFrame:
        rows = [(d, batch_id, start or days[0], days[-1], status, versions) for status in statuses for d in days]
        return self.spark.createDataFrame(
            rows,
            "ds date, batch_id string, batch_start date, batch_end date, status string, "
            "state_versions map<string, bigint>",
        ).withColumn("logged_at", F.current_timestamp())

    @jobstats.grouped("migrate:log")
    def _log_batch(self, batch_id: str, days: list[dt.date], versions: dict[str, int], status: str,
                   start: dt.date | None = None) -> None:
        lakehouse.append(self.spark, self.conf, MIGRATION_RUNS, self._log_frame(batch_id, days, versions, (status,),
                                                                              start))
        self._log_cache = None

    # ---- one night -------------------------------------------------------------------------------------------
    @jobstats.grouped("migrate:night")
    def _night(self, day: dt.date, state: StagedState, item_cats: DataFrame, events_version: int | None) -> NightReport:
        """Stage night ``day`` (:func:`driftrec.migration.night.run_night`: one grouped pass over the night's users)."""
        p = night.run_night(state, self._events(day, events_version), item_cats, day, self.m)
        report = NightReport(day, p.n_events, p.n_users, p.a, p.b, p.method, p.log_likelihood)
        log.info(report.summary())
        return report

    def _events(self, day: dt.date, version: int | None) -> DataFrame:
        """The night's events at the batch's pinned ``events`` version: every read of a night sees the same rows even
        while an ingest commits."""
        if version is None:
            return self.spark.createDataFrame([], "user_id bigint, item_id bigint, event_ts timestamp, event_id string")
        return (
            lakehouse.read_table_at(self.spark, self.conf, EVENTS, version)
            .where(F.col("event_date") == tr.date_lit(day))
            .select(*tr.EVENT_COLS)
        )


def add_arguments(parser) -> None:
    parser.add_argument("--date", type=parse_date, help="the night to process (YYYY-MM-DD, UTC)")
    parser.add_argument("--from", dest="start", type=parse_date, help="first night of a backfill")
    parser.add_argument("--to", dest="end", type=parse_date, help="last night of a backfill (inclusive)")
    parser.add_argument("--rebuild-through", dest="rebuild", type=parse_date,
                        help="build the state as of this date from all history in one pass (empty state only)")
    add_run_id(parser)


def check_modes(args) -> str | None:
    """The error for a flag combination other than one of --date, --from with --to, or --rebuild-through."""
    modes = [args.date is not None, args.start is not None or args.end is not None, args.rebuild is not None]
    if sum(modes) != 1 or (modes[1] and (args.start is None or args.end is None)):
        return "give one of --date, both --from and --to, or --rebuild-through"
    return None


def run_stage(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    """The nightly ``migrate`` stage for ``ds`` (late events replayed) and what it read and wrote."""
    return MigrationJob(spark, conf).run_night(ds).stage_result()


def run_from_args(spark: SparkSession, conf: Config, args) -> list[NightReport]:
    """``--date`` is the nightly stage (late-event replay, a ``pipeline_runs`` row); a range or a rebuild is a
    maintenance operation on the migration tables only."""
    job = MigrationJob(spark, conf)
    if args.rebuild is not None:
        return [job.rebuild(args.rebuild)]
    if args.date is not None:
        runs: list[NightRun] = []

        def work() -> StageResult:
            runs.append(job.run_night(args.date))
            return runs[-1].stage_result()

        run_recorded(spark, conf, args.date, "migrate", work, getattr(args, "run_id", None))
        return runs[-1].reports
    return job.backfill(args.start, args.end)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Interest migration: transitions, decayed counts, interest drift for one night or a range.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (problem := check_modes(args)) is not None:
        parser.error(problem)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spark = build_spark(conf, app_name="driftrec-migrate")
    for report in run_from_args(spark, conf, args):
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
