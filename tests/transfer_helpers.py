"""Load generated data into a lakehouse the way ingest leaves it (canonical events and items tables)."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import EVENTS, ITEMS


def events_frame(spark: SparkSession, events: pd.DataFrame) -> DataFrame:
    df = spark.createDataFrame(
        events[["user_id", "item_id", "event_type", "timestamp", "weight"]],
        "user_id bigint, item_id bigint, event_type string, timestamp bigint, weight double",
    )
    ts = F.timestamp_seconds(F.col("timestamp"))
    return df.select(
        F.sha2(F.concat_ws("|", "user_id", "item_id", "event_type", "timestamp"), 256).alias("event_id"),
        "user_id",
        "item_id",
        "event_type",
        ts.alias("event_ts"),
        "weight",
        F.lit("synthetic").alias("source"),
        F.current_timestamp().alias("ingested_at"),
        F.to_date(ts).alias("event_date"),
    )


def items_frame(spark: SparkSession, items: pd.DataFrame) -> DataFrame:
    df = spark.createDataFrame(
        items[["item_id", "title", "categories", "text"]],
        "item_id bigint, title string, categories array<string>, text string",
    )
    content = F.concat_ws("|", F.coalesce("title", F.lit("")), F.array_join("categories", ","),
                          F.coalesce("text", F.lit("")))
    return df.select(
        "item_id",
        "title",
        "categories",
        "text",
        F.sha2(content, 256).alias("content_hash"),
        F.lit("synthetic").alias("source"),
        F.current_timestamp().alias("updated_at"),
    )


def load(spark: SparkSession, conf: Config, events: pd.DataFrame, items: pd.DataFrame) -> None:
    if len(items):
        lakehouse.merge_upsert(spark, conf, ITEMS, items_frame(spark, items),
                               update_when="t.content_hash <> s.content_hash")
    if len(events):
        lakehouse.append(spark, conf, EVENTS, events_frame(spark, events))
