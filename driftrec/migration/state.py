"""Migration state staged in memory between Delta commits.

A batch (one night, or a chunk of a backfill) reads every state table pinned at the version it had when the batch
began and stages what the nights change as materialised DataFrames; later nights of the batch read the pinned
table overlaid with those changes. The batch ends with one commit per table: a MERGE of the changed keys, a
group replacement, or a ``replaceWhere`` of the batch's dates. A Delta commit costs seconds even on tiny data, so a
30-night backfill pays that cost once instead of thirty times; a single night still writes only what it touched.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession

from driftrec import jobstats, lakehouse, sqltext
from driftrec.config import Config
from driftrec.spark import run_concurrently
from driftrec.tables import TableSpec, conform


def materialise(df: DataFrame) -> DataFrame:
    """Compute once and cut the lineage: nights chain many transforms, and re-planning them is the real cost."""
    return df.localCheckpoint(eager=True)


def _overlay(base: DataFrame, rows: DataFrame, keys: list[str]) -> DataFrame:
    """``base`` with every key present in ``rows`` replaced by ``rows``' version."""
    return base.join(rows.select(*keys).distinct(), keys, "left_anti").unionByName(rows)


class StagedState:
    """Reads pinned at ``versions``; writes staged until :meth:`commit`.

    Staged rows are materialised when a read first needs them, not when staged: a one-night batch hands them
    straight to its MERGEs, which compute them once anyway.
    """

    def __init__(self, spark: SparkSession, conf: Config, versions: dict[str, int]):
        self.spark, self.conf, self.versions = spark, conf, dict(versions)
        self._base: dict[str, DataFrame] = {}  # pinned reads: resolving a Delta snapshot costs a log replay
        self._specs: dict[str, TableSpec] = {}
        self._rows: dict[str, DataFrame] = {}  # staged rows per table
        self._by: dict[str, list[str]] = {}  # columns a staged row replaces the stored rows by
        self._kind: dict[str, str] = {}  # upsert | groups | dates
        self._dirty: set[str] = set()

    def _staged(self, name: str) -> DataFrame:
        if name in self._dirty:
            self._rows[name] = materialise(self._rows[name])
            self._dirty.discard(name)
        return self._rows[name]

    def read(self, spec: TableSpec) -> DataFrame:
        """The table as the batch has left it so far."""
        df = self._base.get(spec.logical)
        if df is None:
            df = self._base[spec.logical] = lakehouse.read_table_at(
                self.spark, self.conf, spec, self.versions[spec.logical]
            )
        if spec.logical in self._rows:
            df = _overlay(df, self._staged(spec.logical), self._by[spec.logical])
        return df

    def _stage(self, spec: TableSpec, df: DataFrame, by: list[str], kind: str) -> None:
        rows = conform(df, spec)
        name = spec.logical
        if name in self._rows:
            if self._kind[name] != kind:
                raise ValueError(f"{name}: staged as {self._kind[name]}, not {kind}")
            rows = _overlay(self._staged(name), rows, by)
        self._specs[name], self._rows[name], self._by[name], self._kind[name] = spec, rows, by, kind
        self._dirty.add(name)

    def upsert(self, spec: TableSpec, df: DataFrame) -> None:
        """Rows keyed by ``spec.key``: insert new keys, replace existing ones."""
        self._stage(spec, df, list(spec.key), "upsert")

    def replace_groups(self, spec: TableSpec, df: DataFrame, group_by: tuple[str, ...]) -> None:
        """Every group present in ``df`` (e.g. one ``from_item``'s successor list) becomes exactly ``df``'s rows."""
        self._stage(spec, df, list(group_by), "groups")

    def replace_dates(self, spec: TableSpec, df: DataFrame) -> None:
        """Rows of a ``ds``-dated table; each staged date replaces that date's rows."""
        self._stage(spec, df, ["ds"], "dates")

    @jobstats.grouped("migrate:commit")
    def commit(self, start: dt.date, end: dt.date) -> None:
        """One write per changed table, the tables written concurrently (``spark.write_threads``). Dated tables get
        the whole ``[start, end]`` range replaced, so a date the batch left empty (a night without active users) is
        emptied too. A failure leaves some tables written: the batch log restores them (``jobs/migrate.py``)."""
        writes = [self._writer(name, start, end) for name in self._rows]
        run_concurrently(self.spark, writes, self.conf.spark.write_threads)
        for d in (self._base, self._specs, self._rows, self._by, self._kind):
            d.clear()
        self._dirty.clear()

    def _writer(self, name: str, start: dt.date, end: dt.date):
        spec, kind, rows, spark, conf = self._specs[name], self._kind[name], self._rows[name], self.spark, self.conf
        if kind == "upsert":
            return lambda: lakehouse.merge_upsert(spark, conf, spec, rows, update_when="true", metrics=False)
        if kind == "groups":  # the source is read three times (rows, groups, keys): compute it once
            by = tuple(self._by[name])
            return lambda: lakehouse.replace_groups(spark, conf, spec, self._staged(name), by, metrics=False)
        where = sqltext.between("ds", start, end)
        return lambda: lakehouse.replace_where(spark, conf, spec, rows, where, metrics=False)


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
