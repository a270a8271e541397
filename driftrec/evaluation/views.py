"""Read-side views of a lakehouse's migration tables that the evaluation segments and plots by."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import CATEGORY_TRANSITIONS, USER_DRIFT


def latest_drift(spark: SparkSession, conf: Config) -> DataFrame:
    """``(user_id, segment, rising_category, js_divergence)`` from each user's latest drift row."""
    w = Window.partitionBy("user_id").orderBy(F.desc("ds"))
    return (
        lakehouse.read_table(spark, conf, USER_DRIFT)
        .withColumn("_r", F.row_number().over(w)).where("_r = 1")
        .select("user_id", F.when(F.col("migrating"), "migrating").otherwise("stable").alias("segment"),
                "rising_category", "js_divergence")
    )


def category_matrix(spark: SparkSession, conf: Config) -> pd.DataFrame:
    """The global category transition matrix ``P(to | from)`` as a square frame."""
    gm = lakehouse.read_table(spark, conf, CATEGORY_TRANSITIONS).select("from_cat", "to_cat", "prob").toPandas()
    return gm.pivot(index="from_cat", columns="to_cat", values="prob").sort_index().sort_index(axis=1)
