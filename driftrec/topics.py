"""Interest topics for catalogues without categories: k-means over the items' text embeddings.

The clustering is fitted once and saved under the lakehouse; later nights only assign items with it, so topic
names stay stable and the migration engine's per-topic state keeps its meaning. ``item_categories`` falls back to
these topics for items without categories.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from driftrec.config import Config
from driftrec.lakehouse import Lakehouse


def topic_model_name(conf: Config) -> str:
    return f"kmeans{conf.embeddings.topics_k}/{conf.embeddings.model}"


def topic_model_path(conf: Config) -> str:
    safe = topic_model_name(conf).replace("/", "__")
    return Lakehouse.of(conf).topic_model_dir(safe)


def _vectors(embeddings: DataFrame) -> DataFrame:
    from pyspark.ml.functions import array_to_vector

    return embeddings.select("item_id", array_to_vector(F.col("embedding")).alias("features"))


def fit_or_load(embeddings: DataFrame, conf: Config):
    """The saved k-means model, or a new one fitted on these embeddings (and saved)."""
    from pyspark.ml.clustering import KMeans, KMeansModel

    path = topic_model_path(conf)
    if Lakehouse.of(conf).exists(path):
        return KMeansModel.load(path)
    model = KMeans(k=conf.embeddings.topics_k, seed=conf.embeddings.topics_seed, featuresCol="features").fit(
        _vectors(embeddings).orderBy("item_id")
    )
    model.write().overwrite().save(path)
    return model


def assign_topics(model, embeddings: DataFrame, model_name: str) -> DataFrame:
    """``(item_id, embedding)`` -> ``item_topics(item_id, topic, model)``; topics are named ``topic_NN``."""
    return model.transform(_vectors(embeddings)).select(
        F.col("item_id"),
        F.format_string("topic_%02d", F.col("prediction")).alias("topic"),
        F.lit(model_name).alias("model"),
    )
