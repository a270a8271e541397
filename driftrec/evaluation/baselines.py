"""Baselines ranked against the full catalogue, already-consumed items excluded, as ``recs(user_id, rank, item_id)``.

* :func:`most_popular`: one global ranking by event count (all time, or a recent window), per user minus what the
  user has consumed. Each user needs at most ``k + |consumed|`` ranks of it, so the join stays linear in events.
* :func:`als_recommendations`: Spark MLlib ALS with implicit feedback; its factors score every item per user in a
  pandas UDF (``recommendForUserSubset`` cannot exclude consumed items without over-fetching a guessed amount).
* :func:`markov_item_recommendations`: the plain first-order item Markov chain (:mod:`driftrec.evaluation.markov`):
  pair counts in Spark, the row of each user's last item scored in a pandas UDF, popularity for ties.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from driftrec.evaluation import markov

RECS_SCHEMA = "user_id long, rank int, item_id long, score double"


def most_popular(train: DataFrame, users: DataFrame, k: int, counted: DataFrame | None = None) -> DataFrame:
    """Top ``k`` of ``counted``'s events (default: ``train``) per user of ``users``, minus the user's ``train`` items.

    Popularity ties break by item id; only items with events in ``counted`` are ranked.
    """
    counted = train if counted is None else counted
    ranking = (
        counted.groupBy("item_id").agg(F.count(F.lit(1)).alias("score"))
        .withColumn("pop_rank", F.row_number().over(Window.orderBy(F.desc("score"), "item_id")))
    )
    consumed = train.select("user_id", "item_id").distinct()
    need = users.select("user_id").distinct().join(
        consumed.groupBy("user_id").agg(F.count(F.lit(1)).alias("n")), "user_id", "left"
    ).select("user_id", (F.coalesce(F.col("n"), F.lit(0)) + F.lit(k)).alias("need"))
    per_user = Window.partitionBy("user_id").orderBy("pop_rank")
    return (
        need.join(F.broadcast(ranking), F.col("pop_rank") <= F.col("need"))
        .join(consumed, ["user_id", "item_id"], "left_anti")
        .withColumn("rank", F.row_number().over(per_user))
        .where(F.col("rank") <= k)
        .select("user_id", F.col("rank").cast("int"), "item_id", F.col("score").cast("double"))
    )


def _factor_topk(item_ids: np.ndarray, item_vecs: np.ndarray, k: int, chunk: int = 256):
    index = pd.Index(item_ids)
    kk = min(k, len(item_ids))

    def score(batches):
        for pdf in batches:
            for start in range(0, len(pdf), chunk):  # bounds the dense users x items block
                part = pdf.iloc[start : start + chunk]
                s = np.stack(part["features"].to_numpy()).astype(np.float64) @ item_vecs.T
                for row, consumed in enumerate(part["consumed"]):
                    if consumed is not None and len(consumed):
                        pos = index.get_indexer(np.asarray(consumed))
                        s[row, pos[pos >= 0]] = -np.inf
                # Top k by score, ties by item id (item_ids is sorted, so a stable sort keeps id order).
                top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
                vals = np.take_along_axis(s, top, axis=1)
                out = pd.DataFrame({
                    "user_id": np.repeat(part["user_id"].to_numpy(), kk),
                    "rank": np.tile(np.arange(1, kk + 1, dtype=np.int32), len(part)),
                    "item_id": item_ids[top].ravel(),
                    "score": vals.ravel(),
                })
                yield out[np.isfinite(out["score"])]

    return score


def als_recommendations(
    spark: SparkSession, train: DataFrame, users: DataFrame, k: int, *, rank: int, reg: float, alpha: float,
    iterations: int, seed: int = 7,
) -> DataFrame:
    """Implicit ALS (confidence ``1 + alpha * count``) fitted on ``train``; top ``k`` unseen items per user."""
    from pyspark.ml.recommendation import ALS

    ratings = train.groupBy("user_id", "item_id").agg(F.count(F.lit(1)).cast("float").alias("n"))
    als = ALS(rank=rank, regParam=reg, alpha=alpha, maxIter=iterations, implicitPrefs=True, seed=seed,
              userCol="user_id", itemCol="item_id", ratingCol="n", coldStartStrategy="drop", nonnegative=False)
    model = als.fit(ratings.select(F.col("user_id").cast("int"), F.col("item_id").cast("int"), "n"))
    items = model.itemFactors.orderBy("id").toPandas()
    item_ids = items["id"].to_numpy(np.int64)
    item_vecs = np.stack(items["features"].to_numpy()).astype(np.float64)
    consumed = train.groupBy("user_id").agg(F.collect_set("item_id").alias("consumed"))
    user_rows = (
        model.userFactors.select(F.col("id").cast("long").alias("user_id"), "features")
        .join(users.select("user_id").distinct(), "user_id", "left_semi")
        .join(consumed, "user_id", "left")
    )
    return user_rows.mapInPandas(_factor_topk(item_ids, item_vecs, k), RECS_SCHEMA)


def item_transitions(train: DataFrame) -> DataFrame:
    """``(prev_item, item_id, count)``: every consecutive pair of each user's events ordered by ``(event_ts,
    event_id)``, no gap cut, no decay (:func:`driftrec.evaluation.markov.transition_counts` in Spark)."""
    ordered = Window.partitionBy("user_id").orderBy("event_ts", "event_id")
    return (
        train.select("user_id", "item_id", F.lag("item_id").over(ordered).alias("prev_item"))
        .where(F.col("prev_item").isNotNull())
        .groupBy("prev_item", "item_id").agg(F.count(F.lit(1)).alias("count"))
        .select(F.col("prev_item").cast("long"), F.col("item_id").cast("long"), F.col("count").cast("long"))
    )


def markov_item_recommendations(train: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Top ``k`` unseen items per user of ``users`` by ``C(last -> i) / C(last -> *)`` over ``train``; ties and users
    whose last item has no successors fall back to popularity (:mod:`driftrec.evaluation.markov`).

    The pair counts and item counts (catalogue-sized) are collected once and travel with the UDF, as ALS's factors do.
    """
    missing = {"user_id", "item_id", "event_ts", "event_id"} - set(train.columns)
    if missing:
        raise ValueError(f"markov_item: train lacks columns {sorted(missing)}")
    model = markov.chain(
        item_transitions(train).toPandas(),
        train.groupBy(F.col("item_id").cast("long").alias("item_id")).agg(F.count(F.lit(1)).alias("count")).toPandas(),
    )
    state = train.groupBy("user_id").agg(
        F.max(F.struct("event_ts", "event_id", "item_id")).getField("item_id").cast("long").alias("last_item"),
        F.collect_set(F.col("item_id").cast("long")).alias("consumed"),
    )
    user_rows = users.select(F.col("user_id").cast("long")).distinct().join(state, "user_id", "left")

    def score(batches):
        for pdf in batches:
            out = markov.recommend(model, pdf, k)
            if len(out):
                yield out

    return user_rows.mapInPandas(score, RECS_SCHEMA)
