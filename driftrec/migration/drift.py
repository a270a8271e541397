"""How far each user's interest has moved: Jensen-Shannon divergence between a recent and a long-term profile.

Both profiles are the user's category evidence decayed with a short and a long half-life, smoothed the same way,
``(C + beta*g) / (|C| + beta)``: a new user's two profiles are equal, a stable user's stay close, and a migrating
user's recent profile runs ahead toward the new category. ``rising``/``falling`` are the categories with the
largest gain/loss of the recent profile over the long-term one.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


def _kl_term(x: Column, mid: Column) -> Column:
    return F.when(x > 0, x * F.log2(x / mid)).otherwise(F.lit(0.0))


def js_terms(p: Column, q: Column) -> Column:
    """Per-cell contribution to JS(p, q) in bits; sum it over a distribution's cells."""
    mid = (p + q) / 2
    return 0.5 * _kl_term(p, mid) + 0.5 * _kl_term(q, mid)


def profile(counts: Column, g: Column, smoothing: float, user_total: Column) -> Column:
    """``(C + beta*g) / (|C| + beta)``: a smoothed category distribution from decayed counts."""
    return (counts + F.lit(float(smoothing)) * g) / (user_total + F.lit(float(smoothing)))


def user_drift(frame: DataFrame, smoothing: float, threshold: float) -> DataFrame:
    """``frame(user_id, category, p, p_new, g, rt_new, lt_new, n)`` -> one row per user with drift measures.

    Columns: ``user_id, js_divergence, day_shift, rising_category, rising_delta, falling_category,
    falling_delta, migrating, n_events``; ties in rising/falling go to the category name.
    """
    user = Window.partitionBy("user_id").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    cells = (
        frame.withColumn("recent", profile(F.col("rt_new"), F.col("g"), smoothing, F.sum("rt_new").over(user)))
        .withColumn("base", profile(F.col("lt_new"), F.col("g"), smoothing, F.sum("lt_new").over(user)))
        .withColumn("delta", F.col("recent") - F.col("base"))
    )
    up = Window.partitionBy("user_id").orderBy(F.col("delta").desc(), F.col("category"))
    down = Window.partitionBy("user_id").orderBy(F.col("delta").asc(), F.col("category"))
    ranked = cells.withColumn("r_up", F.row_number().over(up)).withColumn("r_down", F.row_number().over(down))
    agg = ranked.groupBy("user_id").agg(
        F.sum(js_terms(F.col("recent"), F.col("base"))).alias("js_divergence"),
        F.sum(js_terms(F.col("p"), F.col("p_new"))).alias("day_shift"),
        F.max(F.when(F.col("r_up") == 1, F.col("category"))).alias("rising_category"),
        F.max(F.when(F.col("r_up") == 1, F.col("delta"))).alias("rising_delta"),
        F.max(F.when(F.col("r_down") == 1, F.col("category"))).alias("falling_category"),
        F.max(F.when(F.col("r_down") == 1, F.col("delta"))).alias("falling_delta"),
        F.sum("n").alias("n_events"),
    )
    return agg.select(
        "user_id",
        "js_divergence",
        "day_shift",
        "rising_category",
        "rising_delta",
        "falling_category",
        "falling_delta",
        (F.col("js_divergence") >= F.lit(float(threshold))).alias("migrating"),
        "n_events",
    )
