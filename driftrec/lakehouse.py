"""Delta I/O: create and register tables, MERGE keyed state, replace one partition.

Everything that touches storage goes through here so the transforms elsewhere stay pure DataFrame functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec.config import Config
from driftrec.tables import ALL_TABLES, TableSpec, conform


@dataclass(frozen=True)
class MergeResult:
    inserted: int
    updated: int
    deleted: int = 0


def ensure_database(spark: SparkSession, conf: Config) -> None:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {conf.lakehouse.database}")


def _check_registered_location(spark: SparkSession, conf: Config, spec: TableSpec) -> None:
    """Refuse to write when the catalog name points at another lakehouse: that would mix two lakehouses."""
    name = conf.table_name(spec.logical)
    if not spark.catalog.tableExists(name):
        return
    location = spark.sql(f"DESCRIBE DETAIL {name}").first()["location"]
    expected = conf.table_path(spec.logical)
    if location.removeprefix("file:").rstrip("/") != expected.rstrip("/"):
        raise RuntimeError(
            f"catalog table {name} points at {location}, not at this lakehouse's {expected}; "
            "use another lakehouse.database or drop the old registration"
        )


# (session, catalog name, path) already created and registered by this process: skips repeated catalog round trips.
_ENSURED: set[tuple[int, str, str]] = set()


def ensure_table(spark: SparkSession, conf: Config, spec: TableSpec) -> DeltaTable:
    """Create the table at its path if missing and register it in the catalog; idempotent."""
    key = (id(spark), conf.table_name(spec.logical), conf.table_path(spec.logical))
    if key in _ENSURED and DeltaTable.isDeltaTable(spark, key[2]):
        return DeltaTable.forPath(spark, key[2])
    if not spark.catalog.databaseExists(conf.lakehouse.database):
        ensure_database(spark, conf)
    _check_registered_location(spark, conf, spec)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .tableName(conf.table_name(spec.logical))
        .location(conf.table_path(spec.logical))
        .addColumns(spec.schema)
    )
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    if spec.comment:
        builder = builder.comment(spec.comment)
    table = builder.execute()
    _ENSURED.add(key)
    return table


def ensure_tables(spark: SparkSession, conf: Config, specs: tuple[TableSpec, ...] = ALL_TABLES) -> None:
    for spec in specs:
        ensure_table(spark, conf, spec)


def read_table(spark: SparkSession, conf: Config, spec: TableSpec) -> DataFrame:
    """Read by path: works whether or not the catalog has the table registered."""
    return spark.read.format("delta").load(conf.table_path(spec.logical))


def table_exists(spark: SparkSession, conf: Config, spec: TableSpec) -> bool:
    return DeltaTable.isDeltaTable(spark, conf.table_path(spec.logical))


def _last_commit_metrics(table: DeltaTable) -> dict:
    """Delta's operation metrics of the table's latest commit (the write just run)."""
    row = table.history(1).select("operationMetrics").first()
    return dict(row["operationMetrics"] or {}) if row else {}


def _merge_result(table: DeltaTable) -> MergeResult:
    """Row counts of the table's latest commit (the MERGE just run)."""
    metrics = _last_commit_metrics(table)
    return MergeResult(
        inserted=int(metrics.get("numTargetRowsInserted", 0)),
        updated=int(metrics.get("numTargetRowsUpdated", 0)),
        deleted=int(metrics.get("numTargetRowsDeleted", 0)),
    )


def merge_upsert(
    spark: SparkSession,
    conf: Config,
    spec: TableSpec,
    df: DataFrame,
    *,
    update_when: str | None = None,
    target_filter: str | None = None,
    metrics: bool = True,
) -> MergeResult | None:
    """MERGE ``df`` into the table on its key: insert new keys, update matched ones where ``update_when`` holds.

    ``target_filter`` (an SQL predicate on ``t``) narrows the target scan, e.g. to the partitions the batch
    touches, so a night's MERGE does not read the whole history. ``metrics=False`` skips reading the commit's
    row counts back (a history query) and returns ``None``.
    """
    if not spec.key:
        raise ValueError(f"table {spec.logical} has no key to MERGE on")
    table = ensure_table(spark, conf, spec)
    source = conform(df, spec)
    on = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
    if target_filter:
        on = f"({target_filter}) AND {on}"
    merge = table.alias("t").merge(source.alias("s"), on)
    if update_when is not None:
        merge = merge.whenMatchedUpdateAll(condition=update_when)
    merge.whenNotMatchedInsertAll().execute()
    return _merge_result(table) if metrics else None


def append(spark: SparkSession, conf: Config, spec: TableSpec, df: DataFrame) -> None:
    ensure_table(spark, conf, spec)
    conform(df, spec).write.format("delta").mode("append").save(conf.table_path(spec.logical))


def replace_where(spark: SparkSession, conf: Config, spec: TableSpec, df: DataFrame, predicate: str) -> int:
    """Atomically replace the rows matching ``predicate`` (e.g. ``ds = '2026-01-02'``) with ``df``; rows written.

    Delta validates that every written row matches the predicate, so a rerun of one night replaces exactly it. The
    count comes from the commit's operation metrics, not from reading the table again.
    """
    ensure_table(spark, conf, spec)
    path = conf.table_path(spec.logical)
    conform(df, spec).write.format("delta").mode("overwrite").option("replaceWhere", predicate).save(path)
    return int(_last_commit_metrics(DeltaTable.forPath(spark, path)).get("numOutputRows", 0))


def table_version(spark: SparkSession, conf: Config, spec: TableSpec) -> int:
    """Current Delta version of an existing table, to restore to on a rerun."""
    table = DeltaTable.forPath(spark, conf.table_path(spec.logical))
    return int(table.history(1).select("version").first()["version"])


def restore_version(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> None:
    """Roll the table back to ``version`` (Delta RESTORE; needs that version's files, i.e. not vacuumed)."""
    table = DeltaTable.forPath(spark, conf.table_path(spec.logical))
    if table_version(spark, conf, spec) != version:
        table.restoreToVersion(version)


def replace_groups(
    spark: SparkSession, conf: Config, spec: TableSpec, df: DataFrame, group_by: tuple[str, ...], *,
    metrics: bool = True,
) -> MergeResult | None:
    """Make the table's rows for every group in ``df`` (e.g. one ``from_item``) exactly ``df``'s rows.

    One MERGE on the key: new rows are inserted, kept rows updated, and the group's old rows absent from ``df``
    deleted; groups not in ``df`` are untouched. For pruned per-group views such as a top-N successor list.
    """
    if not spec.key:
        raise ValueError(f"table {spec.logical} has no key to MERGE on")
    table = ensure_table(spark, conf, spec)
    source = conform(df, spec)
    groups = source.select(*group_by).distinct()
    stale = (
        read_table(spark, conf, spec)
        .join(groups, list(group_by), "left_semi")
        .join(source.select(*spec.key), list(spec.key), "left_anti")
    )
    marked = source.withColumn("_drop", F.lit(False)).unionByName(stale.withColumn("_drop", F.lit(True)))
    on = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
    values = {f.name: f"s.{f.name}" for f in spec.schema.fields}
    (
        table.alias("t")
        .merge(marked.alias("s"), on)
        .whenMatchedDelete(condition="s._drop")
        .whenMatchedUpdate(set=values)
        .whenNotMatchedInsert(condition="NOT s._drop", values=values)
        .execute()
    )
    return _merge_result(table) if metrics else None


def read_table_at(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> DataFrame:
    """Read the table as of a Delta version: a job reads its inputs pinned while it rewrites the same tables."""
    return spark.read.format("delta").option("versionAsOf", version).load(conf.table_path(spec.logical))


def register_all(spark: SparkSession, conf: Config) -> None:
    """Register every table that exists on storage, e.g. for a session catalog or a fresh metastore."""
    for spec in ALL_TABLES:
        if table_exists(spark, conf, spec):
            ensure_table(spark, conf, spec)
