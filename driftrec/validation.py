"""Split raw frames into rows fit for the lakehouse and rows for quarantine, each bad row with its reason.

Pure DataFrame transforms: no I/O, the clock is a parameter, so the rules are tested exactly.
"""

from __future__ import annotations

from datetime import date, datetime, time

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

# Synthetic clock for logs that only carry an order: event n of a source sits at 2000-01-01 + n minutes (UTC).
SEQUENCE_EPOCH_S = 946684800
SEQUENCE_STEP_S = 60


def _is_blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def _id_check(raw: Column, name: str) -> tuple[Column, Column]:
    """(the id as bigint, the reason it is rejected or null). Each reason quotes the raw text as ``{name} '...'``
    (pseudonymisation finds it there), and says what is wrong: ``1.0`` is a number but not an integer id."""
    text = F.trim(raw)
    parsed = text.try_cast("bigint")
    number = text.try_cast("double")
    quoted = F.concat(F.lit(f"{name} '"), raw, F.lit("'"))
    reason = (
        F.when(_is_blank(raw), F.lit(f"missing {name}"))
        .when(parsed.isNotNull() & (parsed < 0), F.concat(F.lit("negative "), quoted))
        .when(parsed.isNotNull(), None)
        .when(text.rlike(r"^[+-]?[0-9]+$"), F.concat(F.lit("out-of-range "), quoted, F.lit(" (over 64 bits)")))
        .when(~F.isnan(number) & ~number.isin(float("inf"), float("-inf")), F.concat(F.lit("non-integer "), quoted))
        .otherwise(F.concat(F.lit("non-numeric "), quoted))
    )
    return parsed, reason


def parse_timestamp(raw: Column, fmt: str) -> Column:
    """Parse a timestamp string by convention; unparsable values become null (and are quarantined)."""
    s = F.trim(raw)
    if fmt == "epoch_s":
        secs = s.try_cast("double")
        return F.when(F.isnan(secs) | (F.abs(secs) > 1e11), None).otherwise(
            F.timestamp_micros((secs * 1_000_000).cast("bigint"))
        )
    if fmt == "epoch_ms":
        ms = s.try_cast("double")
        return F.when(F.isnan(ms) | (F.abs(ms) > 1e14), None).otherwise(F.timestamp_micros((ms * 1000).cast("bigint")))
    if fmt == "sequence":
        pos = s.try_cast("bigint")
        return F.timestamp_seconds(F.lit(SEQUENCE_EPOCH_S) + pos * F.lit(SEQUENCE_STEP_S))
    return F.try_to_timestamp(s, F.lit(fmt))


def _first_reason(*reasons: Column) -> Column:
    """All reasons that apply, joined; null when the row is clean."""
    joined = F.concat_ws("; ", *reasons)
    return F.when(joined == "", None).otherwise(joined)


def validate_events(
    raw: DataFrame,
    *,
    event_types: list[str],
    timestamp_format: str,
    now: datetime,
    future_tolerance_s: int,
    min_date: date | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Return (valid events in the EVENTS shape minus ingest metadata, quarantined rows with ``reason``).

    Events before ``min_date`` (UTC) are quarantined: a timestamp of 0 or below is a missing clock, not 1970."""
    user, user_reason = _id_check(F.col("user_id"), "user_id")
    item, item_reason = _id_check(F.col("item_id"), "item_id")
    ts = parse_timestamp(F.col("timestamp"), timestamp_format)
    # A number the epoch clock cannot place (milliseconds read as seconds, say) is out of range, not unparsable.
    number = F.trim(F.col("timestamp")).try_cast("double")
    epoch_number = F.lit(timestamp_format.startswith("epoch")) & number.isNotNull() & ~F.isnan(number)
    limit = F.lit(now).cast("timestamp") + F.expr(f"INTERVAL {int(future_tolerance_s)} SECONDS")
    ts_reason = (
        F.when(_is_blank(F.col("timestamp")), F.lit("missing timestamp"))
        .when(
            ts.isNull() & epoch_number,
            F.concat(F.lit("out-of-range timestamp '"), F.col("timestamp"), F.lit(f"' for {timestamp_format}")),
        )
        .when(ts.isNull(), F.concat(F.lit("unparsable timestamp '"), F.col("timestamp"), F.lit("'")))
        .when(ts > limit, F.concat(F.lit("future timestamp "), ts.cast("string")))
    )
    if min_date is not None:
        ts_reason = ts_reason.when(
            ts < F.lit(datetime.combine(min_date, time())).cast("timestamp"),
            F.concat(
                F.lit("timestamp "),
                ts.cast("string"),
                F.lit(" ('"),
                F.col("timestamp"),
                F.lit(f"') before ingest.min_event_date {min_date.isoformat()}"),
            ),
        )
    weight = F.trim(F.col("weight")).try_cast("double")
    weight_reason = (
        F.when(_is_blank(F.col("weight")), F.lit("missing weight"))
        .when(weight.isNull(), F.concat(F.lit("non-numeric weight '"), F.col("weight"), F.lit("'")))
        .when(F.isnan(weight), F.lit("NaN weight"))
        .when(weight.isin(float("inf"), float("-inf")), F.lit("infinite weight"))
        .when(weight < 0, F.concat(F.lit("negative weight "), weight.cast("string")))
    )
    etype = F.lower(F.trim(F.col("event_type")))
    type_reason = F.when(_is_blank(F.col("event_type")), F.lit("missing event_type")).when(
        ~etype.isin(*[t.lower() for t in event_types]),
        F.concat(F.lit("unknown event type '"), F.col("event_type"), F.lit("'")),
    )
    checked = raw.select(
        user.alias("user_id"),
        item.alias("item_id"),
        etype.alias("event_type"),
        ts.alias("event_ts"),
        weight.alias("weight"),
        F.col("_source").alias("source"),
        F.col("_row").alias("row_content"),
        _first_reason(user_reason, item_reason, ts_reason, weight_reason, type_reason).alias("reason"),
    )
    valid = checked.filter(F.col("reason").isNull()).select(
        F.sha2(
            F.concat_ws("|", "user_id", "item_id", "event_type", F.unix_micros("event_ts").cast("string")), 256
        ).alias("event_id"),
        "user_id",
        "item_id",
        "event_type",
        "event_ts",
        "weight",
        "source",
        F.to_date("event_ts").alias("event_date"),
    )
    bad = checked.filter(F.col("reason").isNotNull()).select(
        F.lit("events").alias("target"), "source", "row_content", "reason"
    )
    return valid, bad


def validate_items(raw: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Return (valid catalogue rows with ``content_hash``, quarantined rows with ``reason``)."""
    item, item_reason = _id_check(F.col("item_id"), "item_id")
    checked = raw.select(
        item.alias("item_id"),
        F.trim(F.col("title")).alias("title"),
        F.coalesce(F.col("categories"), F.array().cast("array<string>")).alias("categories"),
        F.nullif(F.trim(F.col("text")), F.lit("")).alias("text"),
        F.col("_source").alias("source"),
        F.col("_row").alias("row_content"),
        item_reason.alias("reason"),
    )
    valid = checked.filter(F.col("reason").isNull()).select(
        "item_id",
        "title",
        "categories",
        "text",
        F.sha2(
            F.concat_ws(
                "\u241f", F.coalesce("title", F.lit("")), F.array_join("categories", "|"), F.coalesce("text", F.lit(""))
            ),
            256,
        ).alias("content_hash"),
        "source",
    )
    bad = checked.filter(F.col("reason").isNotNull()).select(
        F.lit("items").alias("target"), "source", "row_content", "reason"
    )
    return valid, bad


def dedupe_events(valid: DataFrame) -> DataFrame:
    """One row per event_id; a re-sent event keeps its largest weight, ties by source name (deterministic)."""
    w = Window.partitionBy("event_id").orderBy(F.col("weight").desc(), F.col("source").asc())
    return valid.withColumn("_rn", F.row_number().over(w)).filter("_rn = 1").drop("_rn")


def dedupe_items(valid: DataFrame) -> DataFrame:
    """One row per item_id; the last source in name order wins (a later catalogue file overrides)."""
    w = Window.partitionBy("item_id").orderBy(F.col("source").desc(), F.col("content_hash").asc())
    return valid.withColumn("_rn", F.row_number().over(w)).filter("_rn = 1").drop("_rn")
