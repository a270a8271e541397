"""Spark transforms that turn events into what the sequential recommender trains and is validated on.

Each user's most recent event (users with at least ``min_valid_events``) is held out for validation; the rest of
the history, newest first, is cut into pieces of ``max_seq_len + 1`` items (inputs plus shifted targets), at most
``max_chunks`` of them. Order inside a user is by event time, then event_id, so equal timestamps are deterministic.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

_REQUIRED_EVENTS = ("event_id", "user_id", "item_id", "event_ts")


def _require(df: DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")


def split_events(events: DataFrame, min_valid_events: int) -> DataFrame:
    """Events with ``rn`` (1 = user's newest) and ``is_valid`` (the held-out newest event of an eligible user)."""
    _require(events, _REQUIRED_EVENTS, "events")
    newest_first = Window.partitionBy("user_id").orderBy(F.col("event_ts").desc(), F.col("event_id").desc())
    per_user = Window.partitionBy("user_id").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    return (
        events.select("event_id", "user_id", "item_id", "event_ts")
        .withColumn("rn", F.row_number().over(newest_first))
        .withColumn("n_events", F.count(F.lit(1)).over(per_user))
        .withColumn("is_valid", (F.col("rn") == 1) & (F.col("n_events") >= min_valid_events))
    )


def _collect(df: DataFrame, keys: list[str]) -> DataFrame:
    ordered = F.array_sort(
        F.collect_list(F.struct(F.unix_timestamp("event_ts").alias("ts"), F.col("event_id"), F.col("item_id")))
    )
    return df.groupBy(*keys).agg(ordered.alias("evs")).select(
        *keys,
        F.transform("evs", lambda e: e["item_id"]).alias("item_ids"),
        F.transform("evs", lambda e: e["ts"]).alias("event_ts"),
    )


def user_interest_arrays(interest: DataFrame | None, ds: dt.date) -> DataFrame | None:
    """``user_interest(user_id, category, p, as_of)`` -> one row per user: category and p arrays (by name) and
    ``interest_as_of``, the night the state was last moved (``ds`` when the table has no ``as_of``)."""
    if interest is None:
        return None
    _require(interest, ("user_id", "category", "p"), "user_interest")
    if "as_of" not in interest.columns:
        interest = interest.withColumn("as_of", F.lit(ds).cast("date"))
    interest = interest.where(F.col("as_of") <= F.lit(ds))
    pairs = F.array_sort(F.collect_list(F.struct(F.col("category"), F.col("p").cast("float").alias("p"))))
    return interest.groupBy("user_id").agg(pairs.alias("pairs"), F.max("as_of").alias("interest_as_of")).select(
        "user_id",
        F.transform("pairs", lambda x: x["category"]).alias("interest_categories"),
        F.transform("pairs", lambda x: x["p"]).alias("interest_p"),
        "interest_as_of",
    )


def build_sequences(
    events: DataFrame,
    ds: dt.date,
    *,
    max_seq_len: int,
    max_chunks: int,
    min_valid_events: int,
    interest: DataFrame | None = None,
) -> DataFrame:
    """Events up to ``ds`` -> rows of training_sequences (train chunks and one valid row per eligible user)."""
    ev = split_events(events, min_valid_events)
    piece = max_seq_len + 1
    train = (
        ev.where(~F.col("is_valid"))
        .withColumn("r", F.col("rn") - F.when(F.col("n_events") >= min_valid_events, 1).otherwise(0))
        .withColumn("chunk", F.floor((F.col("r") - 1) / piece).cast("int"))
        .where(F.col("chunk") < max_chunks)
    )
    train = _collect(train, ["user_id", "chunk"]).where(F.size("item_ids") >= 2).withColumn("split", F.lit("train"))
    valid_users = ev.where(F.col("is_valid")).select("user_id")
    valid = (
        ev.join(valid_users, "user_id", "left_semi")
        .where(F.col("rn") <= piece)
        .withColumn("chunk", F.lit(0))
    )
    valid = _collect(valid, ["user_id", "chunk"]).withColumn("split", F.lit("valid"))
    rows = train.unionByName(valid)
    arrays = user_interest_arrays(interest, ds)
    empty_s, empty_f = F.array().cast("array<string>"), F.array().cast("array<float>")
    if arrays is not None:
        # Point in time: the state is current (it has absorbed the user's latest nights), so a sequence gets it
        # only when its last target falls after the night the state was moved; otherwise the feature would hold
        # the very events the sequence predicts (the held-out one included).
        rows = rows.join(arrays, "user_id", "left")
        target_day = F.to_date(F.timestamp_seconds(F.element_at("event_ts", -1)))
        usable = F.col("interest_as_of").isNotNull() & (F.col("interest_as_of") < target_day)
        cats = F.when(usable, F.col("interest_categories")).otherwise(empty_s)
        ps = F.when(usable, F.col("interest_p")).otherwise(empty_f)
    else:
        cats, ps = empty_s, empty_f
    return rows.select(
        F.lit(ds).cast("date").alias("ds"),
        F.col("user_id"),
        F.col("chunk"),
        F.col("split"),
        F.col("item_ids"),
        F.col("event_ts"),
        cats.alias("interest_categories"),
        ps.alias("interest_p"),
    )


def training_popularity(events: DataFrame, min_valid_events: int) -> DataFrame:
    """``(item_id, n)``: event counts without the held-out events: the popularity baseline's scores."""
    return split_events(events, min_valid_events).where(~F.col("is_valid")).groupBy("item_id").agg(
        F.count(F.lit(1)).alias("n")
    )


def primary_category(item_categories: DataFrame) -> DataFrame:
    """``(item_id, category, share)`` -> ``(item_id, category)``: the largest share, ties by category name."""
    w = Window.partitionBy("item_id").orderBy(F.col("share").desc(), F.col("category"))
    return item_categories.withColumn("_r", F.row_number().over(w)).where(F.col("_r") == 1).select(
        "item_id", "category"
    )


def item_side_info(items: DataFrame, event_items: DataFrame, categories: DataFrame,
                   embeddings: DataFrame | None) -> DataFrame:
    """One row per item in the catalogue or the events: ``(item_id, category, embedding)`` (nulls allowed)."""
    ids = items.select("item_id").unionByName(event_items.select("item_id")).distinct()
    out = ids.join(primary_category(categories), "item_id", "left")
    if embeddings is not None:
        out = out.join(embeddings.select("item_id", "embedding"), "item_id", "left")
    else:
        out = out.withColumn("embedding", F.lit(None).cast("array<float>"))
    return out.select("item_id", "category", "embedding")
