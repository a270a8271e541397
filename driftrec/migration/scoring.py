"""The inputs of the Markov score ``p(u, i, t+1)`` from the engine's tables, and the reason sentences.

``score = w * item_term + (1 - w) * category_term`` is computed by :mod:`driftrec.migration.kernels` (inside the
top-k scorer, :mod:`spark_udfs.topk`, which evaluation runs too). This module loads the state it reads
(:func:`load_markov_state`), the predicted next-step interest ``q_u`` with the ``rise`` the reasons use
(:func:`predicted_interest`), ``P(i | c)`` (:func:`category_item_probs`) and turns a reason kind into text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.categories import item_categories
from driftrec.config import Config, MigrationConfig
from driftrec.migration import drift, interest
from driftrec.migration import transitions as tr
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    ITEM_POPULARITY,
    ITEM_TRANSITIONS,
    ITEMS,
    USER_INTEREST,
    USER_TRANSITIONS,
)

@dataclass(frozen=True)
class MarkovState:
    """The engine's state as DataFrames, decayed to ``as_of``; build it with :func:`load_markov_state`."""

    interest: DataFrame  # user_id, category, p, recent_count, long_term_count (decayed)
    user_counts: DataFrame  # user_id, from_cat, to_cat, count (decayed)
    global_matrix: DataFrame  # from_cat, to_cat, count, prob
    item_successors: DataFrame  # from_item, to_item, prob
    item_cats: DataFrame  # item_id, category, share
    item_popularity: DataFrame  # item_id, count (decayed with item_half_life_days; None: plain sums)
    titles: DataFrame  # item_id, title
    a: float
    b: float


def load_markov_state(spark: SparkSession, conf: Config, as_of: dt.date) -> MarkovState:
    m = conf.migration
    read = lambda spec: lakehouse.read_table(spark, conf, spec)  # noqa: E731
    params = read(DRIFT_PARAMS).where(F.col("ds") <= tr.date_lit(as_of)).orderBy(F.col("ds").desc()).first()
    a, b = (params["a"], params["b"]) if params else (m.default_a, m.default_b)
    if m.pin_a is not None:
        a, b = m.pin_a, m.pin_b
    return MarkovState(
        interest=read(USER_INTEREST).select(
            "user_id", "category", "p",
            tr.decayed(F.col("recent_count"), F.col("as_of"), as_of, m.recent_half_life_days).alias("recent_count"),
            tr.decayed(F.col("long_term_count"), F.col("as_of"), as_of, m.baseline_half_life_days)
            .alias("long_term_count"),
        ),
        user_counts=read(USER_TRANSITIONS).select(
            "user_id", "from_cat", "to_cat",
            tr.decayed(F.col("count"), F.col("updated_through"), as_of, m.half_life_days).alias("count"),
        ),
        global_matrix=read(CATEGORY_TRANSITIONS).select("from_cat", "to_cat", "count", "prob"),
        item_successors=read(ITEM_TRANSITIONS).select("from_item", "to_item", "prob"),
        item_cats=item_categories(spark, conf),
        item_popularity=read(ITEM_POPULARITY).select(
            "item_id", tr.decayed(F.col("count"), F.col("as_of"), as_of, m.item_half_life_days).alias("count")
        ),
        titles=read(ITEMS).select("item_id", "title"),
        a=a,
        b=b,
    )


def reason_text(kind: Column, via_item: Column, via_title: Column, via_cat: Column) -> Column:
    """The sentence for a reason kind: successor | rising | category | popular_in (cold start) | popular."""
    title = F.coalesce(via_title, F.concat(F.lit("item "), via_item.cast("string")))
    return (
        F.when(kind == "successor", F.concat(F.lit("people who watched "), title, F.lit(" next watched this")))
        .when(kind == "rising", F.concat(F.lit("your interest in "), via_cat, F.lit(" is rising")))
        .when(kind == "category", F.concat(F.lit("you often watch "), via_cat))
        .when(kind == "popular_in", F.concat(F.lit("popular in "), via_cat))
        .otherwise(F.lit("popular right now"))
    )


def predicted_interest(users: DataFrame, state: MarkovState, mconf: MigrationConfig) -> DataFrame:
    """``(user_id, category, q, rise)`` for ``users(user_id)``, dense over the categories.

    ``q = a*p + b*p.P_u + (1-a-b)*g`` is the predicted next-step interest (``g`` for a user without state), its
    migration term computed by the kernel (:func:`interest.interest_frame`); ``rise`` is the recent profile minus
    the long-term one, which the reasons use.
    """
    mc = mconf
    g = tr.category_popularity(state.global_matrix, mc.category_smoothing)
    cats, g_arr, pg = interest.dense_categories(g, state.global_matrix)
    null = F.lit(None).cast("double")
    cells = users.select("user_id", F.lit(None).cast("string").alias("category"), null.alias("p"), null.alias("rt"),
                         null.alias("lt"), null.alias("n")).unionByName(
        state.interest.join(users, "user_id", "left_semi").select(
            "user_id", "category", "p", F.col("recent_count").alias("rt"), F.col("long_term_count").alias("lt"),
            null.alias("n"))
    )
    frame = interest.interest_frame(
        cells, state.user_counts.join(users, "user_id", "left_semi"), cats, g_arr, pg, mc.shrinkage_strength
    )
    per_user = Window.partitionBy("user_id").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    rt, lt = F.col("rt_prev"), F.col("lt_prev")
    return frame.select(
        "user_id", "category",
        interest.prior_column(state.a, state.b).alias("q"),
        (drift.profile(rt, F.col("g"), mc.drift_smoothing, F.sum(rt).over(per_user))
         - drift.profile(lt, F.col("g"), mc.drift_smoothing, F.sum(lt).over(per_user))).alias("rise"),
    )


def category_item_probs(state: MarkovState, mconf: MigrationConfig) -> DataFrame:
    """``(item_id, category, pic)``: ``P(i | c)`` ∝ ``share_i(c) * (events of i + 1)``, summing to 1 per category
    (events decayed with ``migration.item_half_life_days`` when set). The +1 gives an item without events (a
    cold-start item) its share of its categories."""
    in_cat = Window.partitionBy("category").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    return (
        state.item_cats.join(state.item_popularity, "item_id", "left")
        .withColumn("c", F.col("share") * (F.coalesce(F.col("count"), F.lit(0.0)) + F.lit(1.0)))
        .select("item_id", "category", (F.col("c") / F.sum("c").over(in_cat)).alias("pic"))
    )
