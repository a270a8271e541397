"""Spark reference for the Markov score ``p(u, i, t+1)``: the independent check of :mod:`driftrec.migration.kernels`.

No production path runs it any more (top-k and evaluation score with the kernel inside ``spark_udfs.topk``); the
tests compare the kernel's results with it on small inputs. ``score = w * item_term + (1 - w) * category_term``
(``w = 0`` for a user with no recent items), ``item_term`` = mean over the last L items r of ``P(i | r)``,
``category_term = sum_c q_u(c) P(i | c)``; the reason names the larger term.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from driftrec.config import MigrationConfig
from driftrec.migration import transitions as tr
from driftrec.migration.scoring import MarkovState, category_item_probs, predicted_interest, reason_text


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
