"""Interest state: the prior ``q = a*p + b*p.P_u + (1-a-b)*g`` and the night's update, as Spark transforms.

Time advances per active day of a user: a night moves the interest of the users who have events that night, so
its cost follows the night's events, not the user base. A user with no stored interest starts from ``g``, the
global category popularity.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from driftrec.migration.transitions import require_columns


def migration_term(
    interest: DataFrame, user_counts: DataFrame, global_matrix: DataFrame, strength: float
) -> DataFrame:
    """``m_u(k) = sum_j p_u(j) * P_u(k|j)`` with ``P_u`` shrunk toward the global matrix: ``(user_id, category, m)``.

    ``interest(user_id, category, p)``; ``user_counts(user_id, from_cat, to_cat, count)`` holds the user's decayed
    counts (observed cells only); ``global_matrix(from_cat, to_cat, prob)`` is dense. Computed as the observed
    part ``p_j * C_u[j,k] / (n_u[j] + s)`` plus the global part ``p_j * w_u[j] * P_g[j,k]`` with
    ``w_u[j] = s/(n_u[j] + s)`` (1 for a row the user never left from), so rows need not be materialised.
    """
    require_columns(interest, ("user_id", "category", "p"), "migration_term interest")
    require_columns(user_counts, ("user_id", "from_cat", "to_cat", "count"), "migration_term user_counts")
    s = F.lit(float(strength))
    n_from = user_counts.groupBy("user_id", "from_cat").agg(F.sum("count").alias("n_from"))
    p_from = interest.select("user_id", F.col("category").alias("from_cat"), "p").where(F.col("p") > 0)
    observed = (
        p_from.join(user_counts, ["user_id", "from_cat"])
        .join(n_from, ["user_id", "from_cat"])
        .select("user_id", F.col("to_cat").alias("category"),
                (F.col("p") * F.col("count") / (F.col("n_from") + s)).alias("m"))
    )
    weight = F.when(F.col("n_from").isNull(), F.lit(1.0)).when(F.col("n_from") + s > 0, s / (F.col("n_from") + s))
    via_global = (
        p_from.join(n_from, ["user_id", "from_cat"], "left")
        .select("user_id", "from_cat", (F.col("p") * F.coalesce(weight, F.lit(0.0))).alias("w"))
        .join(global_matrix.select("from_cat", "to_cat", "prob"), "from_cat")
        .select("user_id", F.col("to_cat").alias("category"), (F.col("w") * F.col("prob")).alias("m"))
    )
    return observed.unionByName(via_global).groupBy("user_id", "category").agg(F.sum("m").alias("m"))


def prior_column(a: Column | float, b: Column | float) -> Column:
    """``q = a*p + b*m + (1-a-b)*g`` over columns ``p``, ``m``, ``g``."""
    a_c = a if isinstance(a, Column) else F.lit(float(a))
    b_c = b if isinstance(b, Column) else F.lit(float(b))
    return a_c * F.col("p") + b_c * F.col("m") + (F.lit(1.0) - a_c - b_c) * F.col("g")


def night_frame(
    users: DataFrame,
    categories: DataFrame,
    previous: DataFrame,
    evidence: DataFrame,
    popularity: DataFrame,
    user_counts: DataFrame,
    global_matrix: DataFrame,
    strength: float,
) -> DataFrame:
    """Everything one night needs per ``(user_id, category)`` of the active users, dense over the categories.

    Columns: ``p`` (previous interest, ``g`` for a new user), ``m`` (migration term), ``g``, ``n`` (the night's
    evidence), ``has_prev``, ``lt_prev`` (long-term counts, already decayed to the night).
    ``previous(user_id, category, p, lt_prev)`` is the stored state of these users.
    """
    grid = users.select("user_id").distinct().crossJoin(categories.select("category").distinct())
    known = previous.select("user_id").distinct().withColumn("has_prev", F.lit(True))
    frame = (
        grid.join(previous.select("user_id", "category", "p", "rt_prev", "lt_prev"), ["user_id", "category"], "left")
        .join(known, "user_id", "left")
        .join(F.broadcast(popularity.select("category", "g")), "category")
        .join(evidence.groupBy("user_id", "category").agg(F.sum("n").alias("n")), ["user_id", "category"], "left")
        .select(
            "user_id",
            "category",
            F.coalesce(F.col("has_prev"), F.lit(False)).alias("has_prev"),
            F.when(F.col("has_prev").isNull(), F.col("g")).otherwise(F.coalesce(F.col("p"), F.lit(0.0))).alias("p"),
            "g",
            F.coalesce(F.col("n"), F.lit(0.0)).alias("n"),
            F.coalesce(F.col("rt_prev"), F.lit(0.0)).alias("rt_prev"),
            F.coalesce(F.col("lt_prev"), F.lit(0.0)).alias("lt_prev"),
        )
    )
    m = migration_term(frame.select("user_id", "category", "p"), user_counts, global_matrix, strength)
    return frame.join(m, ["user_id", "category"], "left").withColumn("m", F.coalesce(F.col("m"), F.lit(0.0)))


def updated_interest(frame: DataFrame, a: float, b: float, prior_strength: float) -> DataFrame:
    """``p_new = (kappa*q + n) / (kappa + N_u)``: adds ``q`` and ``p_new`` to the night frame; sums to 1 per user."""
    user = Window.partitionBy("user_id").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    kappa = F.lit(float(prior_strength))
    return frame.withColumn("q", prior_column(a, b)).withColumn(
        "p_new", (kappa * F.col("q") + F.col("n")) / (kappa + F.sum("n").over(user))
    )
