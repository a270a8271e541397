"""Put events and items straight into the lakehouse (what the ingest job does), for migration tests."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.tables import EVENTS, ITEMS


def events_frame(spark, rows):
    """``rows``: ``(user_id, item_id, "YYYY-MM-DD HH:MM:SS")`` or a pandas frame with those columns (UTC)."""
    pdf = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    df = spark.createDataFrame(pdf, "user_id long, item_id long, ts string")
    return event_columns(df.withColumn("event_ts", F.to_timestamp("ts")))


def event_columns(df):
    """``df(user_id, item_id, event_ts[, event_type, weight])`` -> the full ``events`` columns."""
    if "event_type" not in df.columns:
        df = df.withColumn("event_type", F.lit("view"))
    if "weight" not in df.columns:
        df = df.withColumn("weight", F.lit(1.0))
    return df.select(
        F.sha2(F.concat_ws("|", "user_id", "item_id", "event_type", F.col("event_ts").cast("long")), 256)
        .alias("event_id"),
        "user_id", "item_id", "event_type", "event_ts", "weight",
        F.lit("test").alias("source"),
        F.current_timestamp().alias("ingested_at"),
        F.to_date("event_ts").alias("event_date"),
    )


def put_events(spark, conf, rows) -> None:
    lakehouse.append(spark, conf, EVENTS, events_frame(spark, rows) if not hasattr(rows, "sparkSession") else rows)


def put_items(spark, conf, rows) -> None:
    """``rows``: ``(item_id, title, [categories])``."""
    df = spark.createDataFrame(rows, "item_id long, title string, categories array<string>")
    df = df.select(
        "item_id", "title", "categories",
        F.col("title").alias("text"),
        F.sha2(F.concat_ws("|", "title", F.array_join("categories", ",")), 256).alias("content_hash"),
        F.lit("test").alias("source"),
        F.current_timestamp().alias("updated_at"),
    )
    lakehouse.merge_upsert(spark, conf, ITEMS, df)


def assert_rows_close(got: list[tuple], want: list[tuple], what: str, rel: float = 1e-12) -> None:
    """Sorted row lists equal, floats to ``rel`` (Spark's sums may add in another order: last-bit differences)."""
    import pytest

    assert len(got) == len(want), f"{what}: {len(got)} rows != {len(want)}"
    for g, w in zip(got, want):
        assert len(g) == len(w), what
        for x, y in zip(g, w):
            if isinstance(x, float) and isinstance(y, float):
                assert x == pytest.approx(y, rel=rel, abs=1e-15), (what, g, w)
            else:
                assert x == y, (what, g, w)
