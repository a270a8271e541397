"""Ingest job: source files -> ``events``, ``items`` and ``quarantine`` Delta tables.

Idempotent by construction: events MERGE on a content key (user, item, type, timestamp), items on item_id,
quarantine rows on a hash of source, row and reason, so loading the same file twice adds nothing. Every source's
columns are checked, and every byte of every source read (and cached), before the first write: a missing column
or an unreadable file (a truncated Parquet file, say) fails the run naming it and leaves every table as it was.
Then all sources are written together, one commit per table (one MERGE of every events source, one of every items
source, one of every source's quarantined rows), so a write that fails (a Delta conflict, a table constraint)
leaves that table without any of the run's rows, the same rows and values as merging the sources one by one.

With ``privacy.pseudonymise_users`` user ids are replaced by keyed pseudonyms (:mod:`driftrec.pseudonym`) before
the event key is derived, and in quarantined rows too; a missing key fails the run before its first write.

Under spark-submit::

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/ingest.py --movielens /data/ml-25m
"""

from __future__ import annotations

import functools
import logging
import sys
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from driftrec import lakehouse, privacy, sqltext
from driftrec.config import Config
from driftrec.jobargs import base_parser, config_from_args
from driftrec.pseudonym import key_from_env, pseudonymise_quarantine, pseudonymise_raw_events
from driftrec.sources import (
    RawSource,
    SourceReadError,
    read_generic_events,
    read_generic_items,
    read_movielens,
    spark_error_line,
)
from driftrec.spark import build_spark
from driftrec.tables import EVENTS, INGEST_LOG, ITEMS, QUARANTINE
from driftrec.validation import dedupe_events, dedupe_items, validate_events, validate_items

log = logging.getLogger("driftrec.ingest")

# Above this many distinct dates in one batch the MERGE prunes the target by date range instead of a date list.
_MAX_DATE_LIST = 1000


@dataclass
class SourceReport:
    """One source's counts. ``rows_inserted``/``rows_updated``: what the run's one MERGE did with this source's
    rows; a key several sources of the run carry counts once, for the source whose row is stored."""

    target: str
    source: str
    rows_read: int = 0
    rows_valid: int = 0
    rows_duplicate: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_quarantined: int = 0


@dataclass
class IngestReport:
    run_id: str
    sources: list[SourceReport] = field(default_factory=list)

    def total(self, attr: str, target: str | None = None) -> int:
        return sum(getattr(s, attr) for s in self.sources if target is None or s.target == target)

    def summary(self) -> str:
        lines = [f"ingest run {self.run_id}:"]
        for s in self.sources:
            lines.append(
                f"  {s.target:<6} {s.source}: read {s.rows_read}, inserted {s.rows_inserted}, "
                f"updated {s.rows_updated}, duplicates {s.rows_duplicate}, quarantined {s.rows_quarantined}"
            )
        return "\n".join(lines)


@dataclass
class _Prepared:
    """One source, validated: its report so far, its valid rows (cached), those deduplicated, its rejected rows."""

    report: SourceReport
    valid: DataFrame
    unique: DataFrame
    bad: DataFrame


class IngestJob:
    """Loads sources into the lakehouse; ``spark`` and ``conf`` are injected so tests pass their own."""

    def __init__(self, spark: SparkSession, conf: Config, now: datetime | None = None):
        self.spark = spark
        self.conf = conf
        self.now = now or datetime.now(timezone.utc).replace(tzinfo=None)

    # -- planning: read everything (lazily) and check columns before any write --------------------------------
    def plan(
        self,
        *,
        movielens: str | None = None,
        events: list[str] | None = None,
        items: list[str] | None = None,
        fmt: str = "csv",
    ) -> list[RawSource]:
        ic = self.conf.ingest
        sources: list[RawSource] = []
        if movielens:
            sources += read_movielens(self.spark, movielens, ic.csv_multiline)
        for path in events or []:
            sources.append(read_generic_events(self.spark, path, fmt, ic.mapping, ic.csv_delimiter, ic.csv_multiline))
        for path in items or []:
            sources.append(read_generic_items(self.spark, path, fmt, ic.csv_delimiter, ic.csv_multiline))
        if not sources:
            raise ValueError("nothing to ingest: pass --movielens DIR, --events PATH or --items PATH")
        return sources

    def run(self, sources: list[RawSource]) -> IngestReport:
        # Checked before any write; the key stays a local, passed down, never an attribute of the job.
        key = key_from_env(self.conf) if self.conf.privacy.pseudonymise_users else None
        if key is not None:
            unnamed = [s.path for s in sources if s.target == "events" and not s.user_field]
            if unnamed:
                raise ValueError(f"cannot pseudonymise {unnamed}: the source does not name its user id field")
        loaded = self._read_all(sources, key)
        lakehouse.ensure_tables(self.spark, self.conf, (EVENTS, ITEMS, QUARANTINE, INGEST_LOG))
        if any(s.target == "events" for s in sources):  # raw or pseudonymised ids: recorded (or refused) first
            privacy.record_ingest(self.spark, self.conf, pseudonymised=key is not None)
        report = IngestReport(run_id=uuid.uuid4().hex[:12])
        prepared: list[_Prepared] = []
        try:
            for src, raw, n in loaded:
                prepared.append(self._prepare(src, raw, n, key))
            # One commit per table for all sources together: a write that fails leaves that table as it was.
            self._merge(EVENTS, [p for p in prepared if p.report.target == "events"])
            self._merge(ITEMS, [p for p in prepared if p.report.target == "items"])
            self._quarantine(prepared)
        finally:
            for _, raw, _ in loaded:
                raw.unpersist()
            for p in prepared:
                p.valid.unpersist()
                p.bad.unpersist()
        report.sources = [p.report for p in prepared]
        for rep in report.sources:
            log.info("%s", rep)
        self._log(report)
        return report

    def _read_all(self, sources: list[RawSource], key: bytes | None) -> list[tuple[RawSource, DataFrame, int]]:
        """Every source read to the end and cached, before any write: (source, raw frame, rows read).

        Spark reads lazily, so without this a file that breaks mid-read fails the run after earlier sources were
        committed. The writes then read the cache, not the files."""
        loaded: list[tuple[RawSource, DataFrame, int]] = []
        for src in sources:
            frame = src.frame if key is None or src.target != "events" else pseudonymise_raw_events(src.frame, key)
            raw = frame.persist()
            try:
                n = raw.count()
            except Exception as e:  # a Py4J or captured Spark error: the reader's own message names the file
                for _, cached, _ in [*loaded, (src, raw, 0)]:
                    cached.unpersist()
                raise SourceReadError(
                    f"{src.target} source {src.path} could not be read, so nothing was written: {spark_error_line(e)}"
                ) from e
            loaded.append((src, raw, n))
        return loaded

    # -- loading ------------------------------------------------------------------------------------------------
    def _stamp(self, df: DataFrame) -> DataFrame:
        return df.withColumn("ingested_at", F.lit(self.now).cast("timestamp"))

    def _prepare(self, src: RawSource, raw: DataFrame, rows_read: int, key: bytes | None) -> _Prepared:
        """One source validated and deduplicated within itself, its counts taken; nothing written yet."""
        if src.target == "events":
            ic = self.conf.ingest
            # ``raw`` carries pseudonyms already (see _read_all), so event_id (the dedup key) is derived from them.
            valid, bad = validate_events(
                raw,
                event_types=ic.event_types,
                timestamp_format=src.timestamp_format,
                now=self.now,
                future_tolerance_s=ic.future_tolerance_minutes * 60,
                min_date=ic.min_event_date,
            )
            if key is not None:
                bad = pseudonymise_quarantine(bad, key, src.user_field)
            dedupe = dedupe_events
        else:
            valid, bad = validate_items(raw)
            dedupe = dedupe_items
        valid, bad = valid.persist(), bad.persist()
        rep = SourceReport(src.target, src.path, rows_read=rows_read, rows_valid=valid.count())
        unique = dedupe(valid)
        rep.rows_duplicate = rep.rows_valid - unique.count()
        rep.rows_quarantined = bad.count()
        return _Prepared(rep, valid, unique, bad)

    def _merge(self, spec, parts: list[_Prepared]) -> None:
        """MERGE every source's rows for ``spec`` (events or items) in one commit, as if merged one by one.

        Merged one source after another, a key several sources carry would end as the chain stored row, first
        source's, ..., last source's leaves it: each row replaces the previous one where the compared column
        (events: ``weight``, items: ``content_hash``) differs. :func:`_chain_last` picks that row per key from the
        union and flags it ``_forced`` where it replaced an earlier source's row, so it replaces the stored row too,
        whatever that holds. Per-source counts come from a join with the target before the MERGE (one source's:
        from Delta's metrics of the commit): a key several sources carry counts once, for the source whose row is
        kept.
        """
        if not parts:
            return
        events = spec.logical == EVENTS.logical
        compare = "weight" if events else "content_hash"
        frames = [p.unique.withColumn("_src", F.lit(i)) for i, p in enumerate(parts)]
        union = functools.reduce(DataFrame.unionByName, frames)
        union = _chain_last(union, spec.key, compare) if len(parts) > 1 else union.withColumn("_forced", F.lit(False))
        target_filter = None
        if events:
            dates = [r["event_date"] for r in union.select("event_date").distinct().collect()]
            if not dates:
                return
            target_filter = _date_filter(dates)
            source = self._stamp(union).repartition("event_date")
        else:
            source = union.withColumn("updated_at", F.lit(self.now).cast("timestamp"))
        update_when = f"s._forced OR t.{compare} <> s.{compare}"
        split = self._split(spec, source, compare, target_filter) if len(parts) > 1 else None
        merged = lakehouse.merge_upsert(self.spark, self.conf, spec, source, update_when=update_when,
                                        target_filter=target_filter, carry=("_forced",))
        if split is None:
            parts[0].report.rows_inserted, parts[0].report.rows_updated = merged.inserted, merged.updated
            return
        for i, p in enumerate(parts):
            p.report.rows_inserted, p.report.rows_updated = split.get(i, (0, 0))
        counted = tuple(sum(v[j] for v in split.values()) for j in (0, 1))
        if counted != (merged.inserted, merged.updated):  # a concurrent writer between the join and the MERGE
            log.warning("%s: per-source counts %s differ from the commit's (inserted, updated) %s", spec.logical,
                        counted, (merged.inserted, merged.updated))

    def _split(self, spec, source: DataFrame, compare: str, target_filter: str | None) -> dict[int, tuple[int, int]]:
        """``{source index: (rows the MERGE will insert, rows it will update)}``: the MERGE's own clauses evaluated
        on a join of its source with the target's keys (one collect)."""
        target = lakehouse.read_table(self.spark, self.conf, spec).alias("t")
        if target_filter:
            target = target.where(target_filter)
        target = target.select(*spec.key, F.col(compare).alias("_t_value"), F.lit(True).alias("_hit"))
        hit = F.col("_hit").isNotNull()
        update = hit & F.coalesce(F.col("_forced") | (F.col("_t_value") != F.col(compare)), F.lit(False))
        rows = (
            source.join(target, list(spec.key), "left")
            .groupBy("_src")
            .agg(F.sum((~hit).cast("long")).alias("ins"), F.sum(update.cast("long")).alias("upd"))
            .collect()
        )
        return {r["_src"]: (int(r["ins"]), int(r["upd"])) for r in rows}

    def _quarantine(self, prepared: list[_Prepared]) -> None:
        """Every source's rejected rows in one MERGE (insert-only, keyed by a hash of source, row and reason)."""
        bad = [p.bad for p in prepared if p.report.rows_quarantined]
        if not bad:
            return
        keyed = self._stamp(functools.reduce(DataFrame.unionByName, bad)).withColumn(
            "quarantine_id", F.sha2(F.concat_ws("|", "target", "source", "row_content", "reason"), 256)
        )
        lakehouse.merge_upsert(self.spark, self.conf, QUARANTINE, keyed.dropDuplicates(["quarantine_id"]),
                               metrics=False)

    def _log(self, report: IngestReport) -> None:
        rows = [
            {
                "run_id": report.run_id,
                **asdict(s),
                "finished_at": self.now,
            }
            for s in report.sources
        ]
        df = self.spark.createDataFrame(rows, schema=INGEST_LOG.schema)
        lakehouse.append(self.spark, self.conf, INGEST_LOG, df)


def _chain_last(union: DataFrame, key: tuple[str, ...], compare: str) -> DataFrame:
    """Per key, the row that merging the sources one by one (in ``_src`` order) would leave, flagged ``_forced``.

    Merged in turn, a source's row replaces the stored one where ``compare`` differs (``<>``: a null compares as
    no change), so the survivor is the first row of the last run of equal values. ``_forced``: that row replaced
    an earlier source's row, so it replaces the target's row too, even one equal to it."""
    w = Window.partitionBy(*key).orderBy("_src")
    prev = F.lag(F.struct(F.col(compare).alias("v"))).over(w)
    changed = prev.isNull() | F.coalesce(F.col(compare) != prev["v"], F.lit(False))
    last = Window.partitionBy(*key).orderBy(F.col("_src").desc())
    return (
        union.withColumn("_forced", prev.isNotNull())
        .withColumn("_changed", changed)
        .where("_changed")
        .withColumn("_rn", F.row_number().over(last))
        .where("_rn = 1")
        .drop("_changed", "_rn")
    )


def _date_filter(dates: list) -> str:
    if len(dates) <= _MAX_DATE_LIST:
        return sqltext.is_in("t.event_date", sorted(dates))
    return sqltext.between("t.event_date", min(dates), max(dates))


def add_arguments(parser) -> None:
    parser.add_argument("--movielens", metavar="DIR", help="a MovieLens release directory (any supported layout)")
    parser.add_argument("--events", metavar="PATH", action="append", help="generic event file(s) or directory")
    parser.add_argument("--items", metavar="PATH", action="append", help="generic item catalogue file(s)")
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv", help="format of --events/--items")


def run_from_args(spark: SparkSession, conf: Config, args) -> IngestReport:
    job = IngestJob(spark, conf)
    report = job.run(job.plan(movielens=args.movielens, events=args.events, items=args.items, fmt=args.format))
    print(report.summary())
    return report


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Ingest event logs and an item catalogue into the driftrec lakehouse.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_args(args)
    spark = build_spark(conf, app_name="driftrec-ingest")
    run_from_args(spark, conf, args)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
