"""The lakehouse contract: every table's schema, partitioning and key, in one place.

Jobs never spell a table's columns anywhere else; they call :func:`conform` to select exactly these columns in
this order before writing, so a schema drift is caught at the write, not in a downstream query.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T


@dataclass(frozen=True)
class TableSpec:
    logical: str  # attribute of :class:`driftrec.config.TablesConfig` holding the physical name
    schema: T.StructType
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()  # MERGE key; empty for replace-by-partition tables
    comment: str = ""


def _f(name: str, dtype: T.DataType, nullable: bool = True, comment: str = "") -> T.StructField:
    return T.StructField(name, dtype, nullable, metadata={"comment": comment} if comment else {})


EVENTS = TableSpec(
    logical="events",
    schema=T.StructType(
        [
            _f("event_id", T.StringType(), False, "sha256 of user, item, type and timestamp: the dedup key"),
            _f("user_id", T.LongType(), False),
            _f("item_id", T.LongType(), False),
            _f("event_type", T.StringType(), False),
            _f("event_ts", T.TimestampType(), False, "UTC"),
            _f("weight", T.DoubleType(), False),
            _f("source", T.StringType(), False, "file the event was ingested from"),
            _f("ingested_at", T.TimestampType(), False),
            _f("event_date", T.DateType(), False, "UTC date of event_ts; partition column"),
        ]
    ),
    partition_by=("event_date",),
    key=("event_id",),
    comment="Interaction events, one row per distinct (user, item, type, timestamp).",
)

ITEMS = TableSpec(
    logical="items",
    schema=T.StructType(
        [
            _f("item_id", T.LongType(), False),
            _f("title", T.StringType()),
            _f("categories", T.ArrayType(T.StringType(), False), False),
            _f("text", T.StringType(), comment="free text: description, tags"),
            _f("content_hash", T.StringType(), False, "changes when title, categories or text change"),
            _f("source", T.StringType(), False),
            _f("updated_at", T.TimestampType(), False),
        ]
    ),
    key=("item_id",),
    comment="Item catalogue.",
)

QUARANTINE = TableSpec(
    logical="quarantine",
    schema=T.StructType(
        [
            _f("quarantine_id", T.StringType(), False, "sha256 of source, row content and reason"),
            _f("target", T.StringType(), False, "table the row was meant for"),
            _f("source", T.StringType(), False),
            _f("row_content", T.StringType(), False, "the raw row as JSON"),
            _f("reason", T.StringType(), False),
            _f("ingested_at", T.TimestampType(), False),
        ]
    ),
    key=("quarantine_id",),
    comment="Rows rejected by ingestion, with the reason; nothing is silently dropped.",
)

INGEST_LOG = TableSpec(
    logical="ingest_log",
    schema=T.StructType(
        [
            _f("run_id", T.StringType(), False),
            _f("target", T.StringType(), False),
            _f("source", T.StringType(), False),
            _f("rows_read", T.LongType(), False),
            _f("rows_valid", T.LongType(), False),
            _f("rows_inserted", T.LongType(), False),
            _f("rows_updated", T.LongType(), False),
            _f("rows_quarantined", T.LongType(), False),
            _f("finished_at", T.TimestampType(), False),
        ]
    ),
    comment="One row per ingested source per run: the counts the job reports.",
)

ALL_TABLES: tuple[TableSpec, ...] = (EVENTS, ITEMS, QUARANTINE, INGEST_LOG)


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select exactly the table's columns, cast to its types, in its order; fail naming any missing column."""
    missing = [f.name for f in spec.schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"cannot write {spec.logical}: missing column(s) {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in spec.schema.fields])
