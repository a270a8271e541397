"""Top-K ranking metrics as DataFrame transforms, so they run where the recommendations already are (Spark).

Inputs are a ranked list per user ``recs(user_id, rank, item_id)`` (rank 1 = best; already ranked against the full
catalogue by the system under test) and the truth ``truth(user_id, item_id)`` (one or more relevant items). Every
user of ``truth`` counts; one without recommendations scores 0. Definitions, per user and cut-off K:

* HR@K: 1 if any relevant item is in the top K;
* Recall@K: relevant items in the top K / relevant items;
* NDCG@K: sum over hits of 1 / log2(rank + 1), divided by the same sum for the ideal list (min(|relevant|, K) hits
  at ranks 1..);
* MRR@K: 1 / rank of the first hit in the top K (0 without one);
* coverage@K (overall only): distinct items recommended in anyone's top K / catalogue size.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

METRICS = ("hr", "recall", "ndcg", "mrr")


def _ideal_dcg(relevant: F.Column, k: int) -> F.Column:
    """Sum of 1/log2(r + 1) for r = 1..min(relevant, k), as a lookup over precomputed prefix sums."""
    prefix = [0.0]
    for r in range(1, k + 1):
        prefix.append(prefix[-1] + 1.0 / math.log2(r + 1))
    table = F.array(*[F.lit(v) for v in prefix])
    return F.element_at(table, F.least(relevant, F.lit(k)).cast("int") + 1)


def per_user(recs: DataFrame, truth: DataFrame, ks: tuple[int, ...]) -> DataFrame:
    """``(user_id, k, hr, recall, ndcg, mrr)``: one row per truth user and cut-off."""
    truth = truth.select("user_id", "item_id").distinct()
    relevant = truth.groupBy("user_id").agg(F.count(F.lit(1)).alias("relevant"))
    hits = recs.select("user_id", "rank", "item_id").join(truth, ["user_id", "item_id"])
    cutoffs = recs.sparkSession.createDataFrame([(int(k),) for k in ks], "k int")
    per_k = (
        hits.crossJoin(F.broadcast(cutoffs))
        .where(F.col("rank") <= F.col("k"))
        .groupBy("user_id", "k")
        .agg(
            F.count(F.lit(1)).alias("hits"),
            F.sum(1.0 / F.log2(F.col("rank") + 1.0)).alias("dcg"),
            F.min("rank").alias("first_hit"),
        )
    )
    rows = relevant.crossJoin(F.broadcast(cutoffs)).join(per_k, ["user_id", "k"], "left")
    ideal = F.coalesce(*[F.when(F.col("k") == k, _ideal_dcg(F.col("relevant"), k)) for k in ks])
    hits_n = F.coalesce(F.col("hits"), F.lit(0))
    return rows.select(
        "user_id",
        "k",
        (hits_n > 0).cast("double").alias("hr"),
        (hits_n / F.col("relevant")).alias("recall"),
        (F.coalesce(F.col("dcg"), F.lit(0.0)) / ideal).alias("ndcg"),
        F.coalesce(1.0 / F.col("first_hit"), F.lit(0.0)).alias("mrr"),
    )


def summarise(scores: DataFrame, groups: DataFrame | None = None) -> DataFrame:
    """``(segment, k, metric, value, users)``: means over users, overall and per segment.

    ``groups(user_id, segment)`` splits users (e.g. migrating / stable); users without a segment count as overall only.
    """
    melted = scores.select(
        "user_id", "k", F.explode(F.array(*[F.struct(F.lit(m).alias("metric"), F.col(m).alias("v")) for m in METRICS]))
        .alias("m")
    ).select("user_id", "k", "m.metric", "m.v")
    overall = melted.withColumn("segment", F.lit("all"))
    both = overall
    if groups is not None:
        both = overall.unionByName(melted.join(groups.select("user_id", "segment"), "user_id"))
    return both.groupBy("segment", "k", "metric").agg(
        F.avg("v").alias("value"), F.countDistinct("user_id").alias("users")
    )


def coverage(recs: DataFrame, catalogue_size: int, ks: tuple[int, ...]) -> dict[int, float]:
    """Share of the catalogue appearing in anyone's top K, per K."""
    row = recs.agg(*[F.countDistinct(F.when(F.col("rank") <= k, F.col("item_id"))).alias(f"k{k}") for k in ks]).first()
    return {k: (row[f"k{k}"] / catalogue_size if catalogue_size else 0.0) for k in ks}
