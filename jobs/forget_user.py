"""Forget-user job (GDPR erasure): delete users' rows from every table that holds per-user rows, then VACUUM.

Which tables: every table of :data:`driftrec.tables.ALL_TABLES` whose schema has a ``user_id`` column and that exists
on storage (so a table added later is covered without touching this file), plus ``quarantine``, whose
``row_content`` is the raw rejected row as JSON: a row is deleted when its user field (the source's own column name:
``ingest.mapping.user_id`` for generic sources, ``userId`` for MovieLens CSV releases, ``user`` for ml-100k and the
``.dat`` releases; see :mod:`driftrec.sources`) parses to one of the ids, as ingestion would parse it (trimmed,
``007`` and ``7.0`` are 7). With ``privacy.pseudonymise_users`` the ids given are raw ids and their pseudonyms
(:func:`driftrec.pseudonym.pseudonymise_id`) are deleted, never the raw ids themselves unless the lakehouse recorded
raw rows from before pseudonymisation was switched on (:mod:`driftrec.privacy`): the DELETE commit records its
predicate, and a raw id there would sit beside its pseudonym. Without the flag on a pseudonymised lakehouse the job
refuses (raw ids would match nothing). On a lakehouse that does not record its ids' form (ingested before the
record existed) it refuses, before any delete, a request whose ids match no event row
(:func:`driftrec.privacy.check_unrecorded`): an erasure that erased nothing must not exit 0.

Its DELETE and REORG commits carry the ``userMetadata`` :data:`driftrec.lakehouse.ERASURE_MARK`: a migration rewind
never restores a version from before them (:func:`driftrec.lakehouse.restore_problem`), even while VACUUM has not yet
removed the old files, and recomputes from the stored events instead.

Aggregates are not rewritten: ``item_transition_counts``, ``item_transitions``, ``category_transitions``,
``item_popularity``, the trained models (``model_registry`` and their checkpoints) and ``drift_params`` hold no
per-user rows. A user's contribution to them is not separable from everyone else's; in ``category_transitions`` it
decays away under the migration engine's half-life (``migration.half_life_days``), in the item tables only when
``migration.item_half_life_days`` is set (by default they are plain sums and keep it), and it leaves the model at the
next cold-start training.

Deleted is not yet erased: a Delta DELETE writes new data files without the rows, but the old files stay on storage
for time travel until a VACUUM older than the retention removes them. With the default retention
(``privacy.vacuum_retention_hours`` = Delta's 168 h) the VACUUM this job runs right after the DELETE removes none of
the files it just replaced; a VACUUM run after 168 h does. So the nightly schedule runs
``forget-user --vacuum-only`` once a day: it vacuums every user table with the configured retention, and a user is
gone from storage at most 168 h + one day after the request. A shorter retention (``--retention-hours``, down to 0)
erases at once but ends time travel and RESTORE to the versions before it: do not run it while a nightly batch is in
flight (the migration engine restores pinned versions on a rerun), nor while a reader holds an older snapshot.
On a table with deletion vectors the DELETE only marks the rows, so their files are rewritten (REORG PURGE) first.

Not covered: the Delta transaction logs (``_delta_log``) keep per-file column statistics (min/max, so a user id,
and the first characters of a quarantined row) of the removed files until log cleanup (``delta.logRetentionDuration``,
30 days), and the DELETE commit records its predicate, i.e. the ids as stored (pseudonyms on a pseudonymised
lakehouse); scratch lakehouses of ``driftrec evaluate``
(``evaluation.work_dir``), the raw source files and ``topk.extra_users`` live outside this lakehouse's tables.

Several users are best forgotten in one run: each table is scanned once per run, whatever the number of ids. The
DELETEs conflict with a concurrent write to the same table, so run it outside the nightly pipeline's window.

Under spark-submit::

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/forget_user.py --user-id 42 --user-id 7
    spark-submit ... jobs/forget_user.py --vacuum-only
"""

from __future__ import annotations

import logging
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, privacy, stage_runs, tables
from driftrec.config import Config
from driftrec.jobargs import base_parser, config_from_args
from driftrec.spark import build_spark
from driftrec.runlock import RunLock
from driftrec.tables import QUARANTINE, TableSpec

log = logging.getLogger("driftrec.forget_user")

# The user field of quarantined MovieLens rows: ratings.csv names it userId, u.data and ratings.dat are read with the
# column names "user", ... (driftrec.sources.read_movielens).
MOVIELENS_USER_FIELDS = ("userId", "user")


def user_tables(specs: tuple[TableSpec, ...] | None = None) -> tuple[TableSpec, ...]:
    """The tables holding per-user rows: every spec whose schema has a ``user_id`` column."""
    return tuple(s for s in (tables.ALL_TABLES if specs is None else specs) if "user_id" in s.schema.fieldNames())


def check_user_ids(user_ids) -> list[int]:
    """Distinct ids, sorted; a clear error for none, a non-integer or a negative id."""
    ids = list(user_ids or [])
    if not ids:
        raise ValueError("forget-user: no user ids given (pass --user-id ID or --users-file PATH)")
    bad = [u for u in ids if isinstance(u, bool) or not isinstance(u, int) or u < 0]
    if bad:
        raise ValueError(f"forget-user: user ids must be non-negative integers, got {bad[:5]}")
    return sorted(set(ids))


def user_condition(ids: list[int]) -> Column:
    return F.col("user_id").isin(ids)


def quarantine_condition(ids: list[int], user_fields: tuple[str, ...]) -> Column:
    """Quarantined rows whose JSON ``row_content`` has one of ``user_fields`` parsing to one of ``ids``.

    The value is compared as a number (trimmed text cast to a decimal), so JSON numbers and strings, padding and
    leading zeros all match as ingestion would have read them; a row that is not a JSON object matches nothing.
    """
    row = F.from_json(F.col("row_content"), "map<string,string>")
    wanted = [F.lit(u).cast("decimal(38,6)") for u in ids]
    matches = [
        F.coalesce(F.trim(F.try_element_at(row, F.lit(f))).try_cast("decimal(38,6)").isin(wanted), F.lit(False))
        for f in user_fields
    ]
    cond = matches[0]
    for m in matches[1:]:
        cond = cond | m
    return cond


@dataclass
class TableErasure:
    table: str
    rows_deleted: int = 0
    files_removed: int | None = None  # data files VACUUM deleted; None: not vacuumed


@dataclass
class ForgetReport:
    users: int  # ids deleted (pseudonyms included); the ids themselves stay out of logs
    retention_hours: float | None  # of the VACUUM; None: no VACUUM
    tables: list[TableErasure] = field(default_factory=list)

    @property
    def rows_deleted(self) -> int:
        return sum(t.rows_deleted for t in self.tables)

    def table(self, logical: str) -> TableErasure:
        return next(t for t in self.tables if t.table == logical)

    def summary(self) -> str:
        vac = "no vacuum" if self.retention_hours is None else f"vacuum retention {self.retention_hours:g} h"
        head = f"forget-user: {self.users} id(s), {self.rows_deleted} row(s) deleted, {vac}:"
        lines = [head]
        for t in self.tables:
            files = "-" if t.files_removed is None else str(t.files_removed)
            lines.append(f"  {t.table:<22} rows deleted {t.rows_deleted:>8}   files removed {files:>6}")
        return "\n".join(lines)


class ForgetUserJob:
    """Erases users; ``spark`` and ``conf`` are injected so tests pass their own."""

    def __init__(self, spark: SparkSession, conf: Config):
        self.spark = spark
        self.conf = conf

    def targets(self) -> list[TableSpec]:
        """The user tables and quarantine, those that exist on storage."""
        specs = [*user_tables(), QUARANTINE]
        return [s for s in specs if lakehouse.table_exists(self.spark, self.conf, s)]

    def stored_ids(self, user_ids: list[int]) -> list[int]:
        """The ids as this lakehouse stores them (:func:`driftrec.privacy.stored_ids`): pseudonyms only on a
        pseudonymised lakehouse; refused without the key there."""
        return privacy.stored_ids(self.spark, self.conf, user_ids)

    def _condition(self, spec: TableSpec, ids: list[int]) -> Column:
        if spec.logical == QUARANTINE.logical:
            fields = tuple(dict.fromkeys((self.conf.ingest.mapping.user_id, *MOVIELENS_USER_FIELDS)))
            return quarantine_condition(ids, fields)
        return user_condition(ids)

    def _retention(self, retention_hours: float | None) -> float:
        hours = self.conf.privacy.vacuum_retention_hours if retention_hours is None else float(retention_hours)
        if hours < 0:
            raise ValueError(f"forget-user: retention hours must be >= 0, got {hours:g}")
        return hours

    def run(self, user_ids: list[int], vacuum: bool = True, retention_hours: float | None = None) -> ForgetReport:
        """Delete, then VACUUM; holds the run lock so it never races a `driftrec nightly` run's writes."""
        given = check_user_ids(user_ids)
        ids = self.stored_ids(given)
        hours = self._retention(retention_hours) if vacuum else None
        report = ForgetReport(users=len(ids), retention_hours=hours)
        specs = self.targets()
        run_id = f"forget-user-{uuid.uuid4().hex[:6]}"
        with RunLock(self.spark, self.conf, run_id) as lock:
            stage_runs.fail_abandoned(self.spark, self.conf, lock.taken_over, run_id)
            privacy.check_unrecorded(self.spark, self.conf, given, ids)
            with lakehouse.erasure_commits(self.spark):  # no rewind may restore a version from before them
                self._delete(specs, ids, report)
            if hours is not None:
                self._vacuum([s for s, t in zip(specs, report.tables) if t.rows_deleted], hours, report)
        return report

    def _delete(self, specs: list[TableSpec], ids: list[int], report: ForgetReport) -> None:
        for spec in specs:
            n = lakehouse.delete_where(self.spark, self.conf, spec, self._condition(spec, ids), purge=True)
            report.tables.append(TableErasure(spec.logical, rows_deleted=n))
            log.info("%s: %d row(s) deleted", spec.logical, n)

    def vacuum_only(self, retention_hours: float | None = None) -> ForgetReport:
        """VACUUM every user table and quarantine: the daily step that erases files of earlier deletions."""
        hours = self._retention(retention_hours)
        specs = self.targets()
        report = ForgetReport(users=0, retention_hours=hours, tables=[TableErasure(s.logical) for s in specs])
        self._vacuum(specs, hours, report)
        return report

    def _vacuum(self, specs: list[TableSpec], hours: float, report: ForgetReport) -> None:
        for spec in specs:
            removed = lakehouse.vacuum(self.spark, self.conf, spec, hours)
            report.table(spec.logical).files_removed = removed
            log.info("%s: vacuum removed %s file(s)", spec.logical, removed)


def read_users_file(path: str) -> list[int]:
    """One id per line; blank lines and ``#`` comments skipped; a bad line is an error naming it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"forget-user: cannot read users file {path}: {e.strerror or e}") from None
    ids = []
    for n, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            ids.append(int(value))
        except ValueError:
            raise ValueError(f"forget-user: {path}:{n}: not an integer user id") from None
    return ids


def user_ids_from_args(args) -> list[int]:
    """The ids of ``--user-id`` and ``--users-file``; ValueError when none is given (unless ``--vacuum-only``)."""
    ids = list(args.user_ids or [])
    for path in args.users_files or []:
        ids += read_users_file(path)
    if args.vacuum_only:
        if ids:
            raise ValueError("forget-user: --vacuum-only takes no user ids")
        return []
    return check_user_ids(ids)


def add_arguments(parser) -> None:
    parser.add_argument("--user-id", dest="user_ids", type=int, action="append", metavar="ID",
                        help="a user id to forget (repeatable)")
    parser.add_argument("--users-file", dest="users_files", action="append", metavar="PATH",
                        help="a text file with one user id per line (repeatable)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-vacuum", action="store_true", help="delete only; a later --vacuum-only run erases files")
    mode.add_argument("--vacuum-only", action="store_true",
                      help="no deletes: VACUUM every user table (the daily step that erases deleted rows' files)")
    parser.add_argument("--retention-hours", type=float, metavar="H",
                        help="VACUUM retention (default privacy.vacuum_retention_hours; below 168 ends time travel)")


def run_from_args(spark: SparkSession, conf: Config, args) -> ForgetReport:
    job = ForgetUserJob(spark, conf)
    if args.vacuum_only:
        report = job.vacuum_only(args.retention_hours)
    else:
        report = job.run(user_ids_from_args(args), vacuum=not args.no_vacuum, retention_hours=args.retention_hours)
    print(report.summary())
    return report


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Forget users (GDPR erasure): delete their rows from the lakehouse, then VACUUM.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        user_ids_from_args(args)  # refuse before starting Spark
    except ValueError as e:
        parser.error(str(e))
    conf = config_from_args(args)
    spark = build_spark(conf, app_name="driftrec-forget-user")
    run_from_args(spark, conf, args)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
