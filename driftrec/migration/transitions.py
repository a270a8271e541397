"""Transitions between consecutive events and their decayed counts, as Spark transforms.

Counts are stored lazily decayed: a row holds ``count`` as of its own date ``as_of``; its value on a later day D
is ``count * 2^(-(D - as_of)/T)``. A night therefore rewrites only the rows its events touch, and one
recomputation from scratch (:func:`counts_from_scratch`) gives the same numbers as any sequence of nights.
A half-life of ``None`` means no decay (plain sums): the item level's default (``migration.item_half_life_days``).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

EVENT_COLS = ("user_id", "item_id", "event_ts", "event_id")


def require_columns(df: DataFrame, columns: tuple[str, ...] | list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing} (has {df.columns})")


def date_lit(day: dt.date) -> Column:
    return F.lit(day.isoformat()).cast("date")


def decayed(count: Column, since: Column, day: dt.date, half_life_days: float | None) -> Column:
    """``count * 2^(-(day - since)/T)``: a lazily stored count brought forward to ``day``; ``T = None``: ``count``."""
    if half_life_days is None:
        return count
    age = F.datediff(date_lit(day), since).cast("double")
    return count * F.pow(F.lit(2.0), -age / F.lit(float(half_life_days)))


def transition_pairs(events: DataFrame, carried: DataFrame | None, gap_minutes: int) -> DataFrame:
    """Consecutive events of each user at most ``gap_minutes`` apart -> ``(user_id, from_item, to_item, to_date)``.

    ``carried`` holds each user's last event from earlier nights (same columns): it can be the ``from`` side of a
    pair but never the ``to`` side, so a pair is counted on the night of its second event. Order is by time, then
    ``event_id``, so simultaneous events pair deterministically.
    """
    require_columns(events, EVENT_COLS, "transition_pairs events")
    rows = events.select(*EVENT_COLS, F.lit(False).alias("carried"))
    if carried is not None:
        rows = rows.unionByName(carried.select(*EVENT_COLS, F.lit(True).alias("carried")))
    w = Window.partitionBy("user_id").orderBy("event_ts", "event_id")
    with_prev = rows.select(
        "user_id",
        "item_id",
        "event_ts",
        "carried",
        F.lag("item_id").over(w).alias("prev_item"),
        F.lag("event_ts").over(w).alias("prev_ts"),
    )
    gap = F.col("event_ts").cast("long") - F.col("prev_ts").cast("long")
    return with_prev.where(
        ~F.col("carried") & F.col("prev_item").isNotNull() & (gap <= F.lit(gap_minutes * 60))
    ).select(
        "user_id",
        F.col("prev_item").alias("from_item"),
        F.col("item_id").alias("to_item"),
        F.to_date("event_ts").alias("to_date"),
    )


def last_events(events: DataFrame) -> DataFrame:
    """Each user's latest event (ties by ``event_id``), the state carried to the next night."""
    w = Window.partitionBy("user_id").orderBy(F.col("event_ts").desc(), F.col("event_id").desc())
    return events.select(*EVENT_COLS, F.row_number().over(w).alias("_rn")).where("_rn = 1").select(*EVENT_COLS)


def category_pairs(pairs: DataFrame, item_cats: DataFrame) -> DataFrame:
    """Item pairs -> category pairs weighted ``share_from * share_to``: ``(user_id, from_cat, to_cat, to_date, n)``.

    Pairs whose items have no category are left out (see :mod:`driftrec.categories`).
    """
    fc = item_cats.select(F.col("item_id").alias("from_item"), F.col("category").alias("from_cat"),
                          F.col("share").alias("sf"))
    tc = item_cats.select(F.col("item_id").alias("to_item"), F.col("category").alias("to_cat"),
                          F.col("share").alias("st"))
    return (
        pairs.join(fc, "from_item")
        .join(tc, "to_item")
        .select("user_id", "from_cat", "to_cat", "to_date", (F.col("sf") * F.col("st")).alias("n"))
    )


def item_pairs(pairs: DataFrame) -> DataFrame:
    """Item pairs without repeats of the same item: ``(from_item, to_item, to_date, n)``."""
    return pairs.where(F.col("from_item") != F.col("to_item")).select(
        "from_item", "to_item", "to_date", F.lit(1.0).alias("n")
    )


def category_evidence(events: DataFrame, item_cats: DataFrame) -> DataFrame:
    """Events -> ``(user_id, category, event_date, n)``: each event split over its item's categories."""
    return events.join(item_cats, "item_id").select(
        "user_id", "category", F.to_date("event_ts").alias("event_date"), F.col("share").alias("n")
    )


def decay_merge(
    old: DataFrame | None,
    new: DataFrame,
    keys: list[str],
    day: dt.date,
    half_life_days: float | None,
    *,
    since_col: str = "as_of",
) -> DataFrame:
    """Bring ``old(keys, count, since_col)`` forward to ``day`` and add ``new(keys, n)``: ``(keys, count)``.

    A full outer join: keys only in ``old`` are decayed, keys only in ``new`` start at their new count.
    """
    fresh = new.groupBy(*keys).agg(F.sum("n").alias("n"))
    if old is None:
        return fresh.select(*keys, F.col("n").alias("count"))
    prev = old.select(*keys, decayed(F.col("count"), F.col(since_col), day, half_life_days).alias("prev"))
    return prev.join(fresh, keys, "full_outer").select(
        *keys, (F.coalesce(F.col("prev"), F.lit(0.0)) + F.coalesce(F.col("n"), F.lit(0.0))).alias("count")
    )


def counts_from_scratch(rows: DataFrame, keys: list[str], date_col: str, day: dt.date,
                        half_life_days: float | None):
    """One recomputation: ``sum_e n_e * 2^(-(day - date_e)/T)`` over rows dated up to ``day``: ``(keys, count)``."""
    return (
        rows.where(F.col(date_col) <= date_lit(day))
        .groupBy(*keys)
        .agg(F.sum(decayed(F.col("n"), F.col(date_col), day, half_life_days)).alias("count"))
    )


def global_category_matrix(counts: DataFrame | None, categories: DataFrame, alpha: float) -> DataFrame:
    """Dense K x K smoothed matrix from ``counts(from_cat, to_cat, count)`` over ``categories(category)``.

    ``prob = (count + alpha) / (row_total + K*alpha)``: every row sums to 1, also rows never observed.
    """
    cats = categories.select("category").distinct()
    grid = cats.select(F.col("category").alias("from_cat")).crossJoin(cats.select(F.col("category").alias("to_cat")))
    if counts is not None:
        grid = grid.join(counts.select("from_cat", "to_cat", "count"), ["from_cat", "to_cat"], "left")
    else:
        grid = grid.withColumn("count", F.lit(None).cast("double"))
    grid = grid.withColumn("count", F.coalesce(F.col("count"), F.lit(0.0)))
    row = Window.partitionBy("from_cat").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    k = F.count(F.lit(1)).over(row).cast("double")
    return grid.select(
        "from_cat",
        "to_cat",
        "count",
        ((F.col("count") + F.lit(alpha)) / (F.sum("count").over(row) + k * F.lit(alpha))).alias("prob"),
    )


def category_popularity(global_matrix: DataFrame, alpha: float) -> DataFrame:
    """``g``: smoothed share of transitions landing in each category, ``(category, g)``, sums to 1."""
    col = global_matrix.groupBy(F.col("to_cat").alias("category")).agg(F.sum("count").alias("c"))
    # The totals as a one-row frame joined to every category, not a window with no partition (one task for all rows).
    totals = col.agg(F.sum("c").alias("total"), F.count(F.lit(1)).cast("double").alias("k"))
    return col.crossJoin(F.broadcast(totals)).select(
        "category", ((F.col("c") + F.lit(alpha)) / (F.col("total") + F.col("k") * alpha)).alias("g"),
    )


def shrunk_user_rows(user_counts: DataFrame, global_matrix: DataFrame, strength: float) -> DataFrame:
    """Observed cells of ``P_u = (C_u + s*P_g) / (n_u + s)``: ``(user_id, from_cat, to_cat, count, prob, global_weight)``.

    Unobserved cells are ``global_weight * P_g`` and are not materialised, which keeps the table sparse.
    """
    row = Window.partitionBy("user_id", "from_cat").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    s = F.lit(float(strength))
    gp = global_matrix.select("from_cat", "to_cat", F.col("prob").alias("gp"))
    return (
        user_counts.join(gp, ["from_cat", "to_cat"], "left")
        .withColumn("n_from", F.sum("count").over(row))
        .select(
            "user_id",
            "from_cat",
            "to_cat",
            "count",
            ((F.col("count") + s * F.coalesce(F.col("gp"), F.lit(0.0))) / (F.col("n_from") + s)).alias("prob"),
            (s / (F.col("n_from") + s)).alias("global_weight"),
        )
    )


def item_successors(
    pair_counts: DataFrame, popularity: DataFrame, smoothing: float, top_n: int
) -> DataFrame:
    """Top-N successors per ``from_item``: ``(from_item, to_item, count, prob, rank)``, rows summing to 1.

    ``raw = (c_ij + s*pi_j) / (c_i + s)`` where ``pi`` spreads the pseudo-count ``s`` over the ``top_n`` most
    popular items other than ``i`` (``popularity(item_id, count)``, ties by id); the row is pruned to the top-N by ``raw``
    (ties by ``to_item``) and renormalised. Catalogue size does not matter: each row has at most
    ``observed + top_n`` candidates.
    """
    # A distributed top-k (sort + limit): a window over the whole popularity table would move every item into one
    # task, and a global window even over these top_n + 1 rows logs Spark's single-partition warning per night.
    top = (
        popularity.where(F.col("count") > 0).orderBy(F.col("count").desc(), F.col("item_id")).limit(top_n + 1)
        .select(F.col("item_id").alias("to_item"), F.col("count").alias("pop"))
    )
    # Per row, the prior covers the top-N popular items other than the row's own item (ties by id).
    per_source = Window.partitionBy("from_item").orderBy(F.col("pop").desc(), F.col("to_item"))
    in_row = Window.partitionBy("from_item").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    prior = (
        pair_counts.select("from_item").distinct()
        .crossJoin(F.broadcast(top))
        .where(F.col("from_item") != F.col("to_item"))
        .withColumn("k", F.row_number().over(per_source))
        .where(F.col("k") <= top_n)
        .select("from_item", "to_item", (F.col("pop") / F.sum("pop").over(in_row)).alias("pi"))
    )
    candidates = (
        pair_counts.select("from_item", "to_item", "count")
        .join(prior, ["from_item", "to_item"], "full_outer")
        .where(F.col("from_item") != F.col("to_item"))
        .select(
            "from_item",
            "to_item",
            F.coalesce(F.col("count"), F.lit(0.0)).alias("count"),
            F.coalesce(F.col("pi"), F.lit(0.0)).alias("pi"),
        )
    )
    row = Window.partitionBy("from_item").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    s = F.lit(float(smoothing))
    scored = candidates.withColumn(
        "raw", (F.col("count") + s * F.col("pi")) / (F.sum("count").over(row) + s)
    ).where(F.col("raw") > 0)
    rank_w = Window.partitionBy("from_item").orderBy(F.col("raw").desc(), F.col("to_item"))
    kept = scored.withColumn("rank", F.row_number().over(rank_w)).where(F.col("rank") <= top_n)
    return kept.select(
        "from_item",
        "to_item",
        "count",
        (F.col("raw") / F.sum("raw").over(row)).alias("prob"),
        F.col("rank").cast("int").alias("rank"),
    )
