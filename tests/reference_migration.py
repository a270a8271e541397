"""Spark references for the engine's arithmetic: the independent check of :mod:`driftrec.migration.kernels`.

No production path runs them any more: the nightly interest update and the predicted interest run the kernel in
grouped pandas UDFs (:mod:`driftrec.migration.interest`), top-k and evaluation score with it inside
``spark_udfs.topk``. The tests compare the kernel's results with these joins on small inputs.

Markov score: ``score = w * item_term + (1 - w) * category_term``
(``w = 0`` for a user with no recent items), ``item_term`` = mean over the last L items r of ``P(i | r)``,
``category_term = sum_c q_u(c) P(i | c)``; the reason names the larger term.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from driftrec.config import MigrationConfig
from driftrec.migration import transitions as tr
from driftrec.migration.interest import prior_column
from driftrec.migration.transitions import require_columns
from driftrec.migration import drift
from driftrec.migration.scoring import MarkovState, category_item_probs, reason_text


def markov_scores(
    candidates: DataFrame, recent: DataFrame, state: MarkovState, mconf: MigrationConfig, rising_margin: float
) -> DataFrame:
    """``candidates(user_id, item_id)`` + ``recent(user_id, item_id, event_ts)`` ->
    ``(user_id, item_id, score, reason)``.

    ``recent`` may hold a user's whole history: only the last ``mconf.recent_items`` (ties by item id) are used.
    Users with no interest state get the global popularity ``g`` as interest; ``rising_margin`` is
    ``topk.rising_margin``.
    """
    tr.require_columns(candidates, ("user_id", "item_id"), "markov_scores candidates")
    tr.require_columns(recent, ("user_id", "item_id", "event_ts"), "markov_scores recent")
    w = float(mconf.item_term_weight)
    users = candidates.select("user_id").distinct()

    # Item term: mean successor probability from the last L items; remember the strongest source for the reason.
    last = Window.partitionBy("user_id").orderBy(F.col("event_ts").desc(), F.col("item_id").desc())
    recent_l = (
        recent.join(users, "user_id", "left_semi")
        .select("user_id", "item_id", "event_ts", F.row_number().over(last).alias("pos"))
        .where(F.col("pos") <= mconf.recent_items)
    )
    n_recent = recent_l.groupBy("user_id").agg(F.count(F.lit(1)).alias("n_recent"))
    strongest = Window.partitionBy("user_id", "item_id").orderBy(F.col("prob").desc(), F.col("pos"))
    via_items = (
        recent_l.select("user_id", F.col("item_id").alias("from_item"), "pos")
        .join(state.item_successors, "from_item")
        .withColumnRenamed("to_item", "item_id")
        .join(candidates.select("user_id", "item_id"), ["user_id", "item_id"], "left_semi")
        .withColumn("r", F.row_number().over(strongest))
        .groupBy("user_id", "item_id")
        .agg(F.sum("prob").alias("prob_sum"), F.max(F.when(F.col("r") == 1, F.col("from_item"))).alias("via_item"))
        .join(n_recent, "user_id")
        .select("user_id", "item_id", (F.col("prob_sum") / F.col("n_recent")).alias("item_term"), "via_item")
    )

    # Category term: predicted next-step interest q_u times popularity inside the category.
    q = predicted_interest(users, state, mconf)
    pop_in_cat = category_item_probs(state, mconf)
    top_cat = Window.partitionBy("user_id", "item_id").orderBy(F.col("contrib").desc(), F.col("category"))
    via_cats = (
        candidates.select("user_id", "item_id")
        .join(pop_in_cat, "item_id")
        .join(q, ["user_id", "category"])
        .withColumn("contrib", F.col("q") * F.col("pic"))
        .withColumn("r", F.row_number().over(top_cat))
        .groupBy("user_id", "item_id")
        .agg(
            F.sum("contrib").alias("cat_term"),
            F.max(F.when(F.col("r") == 1, F.col("category"))).alias("via_cat"),
            F.max(F.when(F.col("r") == 1, F.col("rise"))).alias("rise"),
        )
    )

    # Both terms are computed once and cut from the lineage: the combined plan is too deep to re-plan cheaply.
    via_items = via_items.localCheckpoint(eager=True)
    via_cats = via_cats.localCheckpoint(eager=True)
    scored = (
        candidates.select("user_id", "item_id")
        .join(n_recent, "user_id", "left")
        .join(via_items, ["user_id", "item_id"], "left")
        .join(via_cats, ["user_id", "item_id"], "left")
        .join(state.titles.select(F.col("item_id").alias("via_item"), F.col("title").alias("via_title")),
              "via_item", "left")
        .select(
            "user_id", "item_id", "via_item", "via_title", "via_cat", "rise",
            # A user with no recent items has no item term: the category term then carries all the weight.
            F.when(F.col("n_recent").isNull(), F.lit(0.0)).otherwise(F.lit(w)).alias("w"),
            F.coalesce(F.col("item_term"), F.lit(0.0)).alias("item_term"),
            F.coalesce(F.col("cat_term"), F.lit(0.0)).alias("cat_term"),
        )
    )
    score = F.col("w") * F.col("item_term") + (F.lit(1.0) - F.col("w")) * F.col("cat_term")
    kind = (
        F.when(
            F.col("via_item").isNotNull()
            & (F.col("w") * F.col("item_term") >= (F.lit(1.0) - F.col("w")) * F.col("cat_term")),
            F.lit("successor"),
        )
        .when(F.col("rise") > F.lit(float(rising_margin)), F.lit("rising"))
        .when(F.col("via_cat").isNotNull(), F.lit("category"))
        .otherwise(F.lit("popular"))
    )
    reason = reason_text(kind, F.col("via_item"), F.col("via_title"), F.col("via_cat"))
    return scored.select("user_id", "item_id", score.alias("score"), reason.alias("reason"))


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


def predicted_interest(users: DataFrame, state: MarkovState, mconf: MigrationConfig) -> DataFrame:
    """``(user_id, category, q, rise)`` for ``users(user_id)``, dense over the categories.

    ``q = a*p + b*p.P_u + (1-a-b)*g`` is the predicted next-step interest (``g`` for a user without state);
    ``rise`` is the recent profile minus the long-term one, which the reasons use.
    """
    mc = mconf
    g = tr.category_popularity(state.global_matrix, mc.category_smoothing)
    cats = g.select("category")
    user_interest = state.interest.join(users, "user_id", "left_semi")
    known = user_interest.select("user_id").distinct().withColumn("known", F.lit(True))
    dense = (
        users.crossJoin(cats)
        .join(user_interest, ["user_id", "category"], "left")
        .join(known, "user_id", "left")
        .join(F.broadcast(g), "category")
        .select(
            "user_id", "category", "g",
            F.when(F.col("known").isNull(), F.col("g")).otherwise(F.coalesce(F.col("p"), F.lit(0.0))).alias("p"),
            F.coalesce(F.col("recent_count"), F.lit(0.0)).alias("rt"),
            F.coalesce(F.col("long_term_count"), F.lit(0.0)).alias("lt"),
        )
    )
    mig = migration_term(
        dense.select("user_id", "category", "p"),
        state.user_counts.join(users, "user_id", "left_semi"),
        state.global_matrix,
        mc.shrinkage_strength,
    )
    per_user = Window.partitionBy("user_id").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    return (
        dense.join(mig, ["user_id", "category"], "left")
        .withColumn("m", F.coalesce(F.col("m"), F.lit(0.0)))
        .select(
            "user_id", "category",
            prior_column(state.a, state.b).alias("q"),
            (drift.profile(F.col("rt"), F.col("g"), mc.drift_smoothing, F.sum("rt").over(per_user))
             - drift.profile(F.col("lt"), F.col("g"), mc.drift_smoothing, F.sum("lt").over(per_user))).alias("rise"),
        )
    )
