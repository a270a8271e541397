"""Item -> interest category mapping: the single place the migration engine gets its categories.

An item listing ``n`` categories gives each a share ``1/n`` (its events and transitions are split evenly). An item
with no category takes its text-embedding topic (``item_topics``, when the embedding job has clustered the
catalogue), else maps to ``migration.fallback_category`` with share 1 when that is set, and is otherwise left out
of the category-level model (it still takes part in item-level transitions). Callers must not read
``items.categories`` themselves.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import ITEMS


def categories_from_items(items: DataFrame, fallback_category: str | None = None) -> DataFrame:
    """``items(item_id, categories)`` -> ``(item_id, category, share)``; duplicates inside one list count once."""
    cats = items.select(
        F.col("item_id"),
        F.array_distinct(F.filter(F.coalesce(F.col("categories"), F.array()), lambda c: c.isNotNull() & (c != "")))
        .alias("cats"),
    )
    if fallback_category is not None:
        cats = cats.withColumn(
            "cats", F.when(F.size("cats") == 0, F.array(F.lit(fallback_category))).otherwise(F.col("cats"))
        )
    return cats.select(
        F.col("item_id"),
        F.explode("cats").alias("category"),
        (F.lit(1.0) / F.size("cats")).alias("share"),
    )


def item_categories(spark: SparkSession, conf: Config) -> DataFrame:
    """``DataFrame(item_id bigint, category string, share double)``; shares of one item sum to 1."""
    if not lakehouse.table_exists(spark, conf, ITEMS):
        return spark.createDataFrame([], "item_id bigint, category string, share double")
    items = with_topic_fallback(spark, conf, lakehouse.read_table(spark, conf, ITEMS))
    return categories_from_items(items, conf.migration.fallback_category)


def topics_as_categories(items: DataFrame, topics: DataFrame) -> DataFrame:
    """Items without categories take their text-embedding topic (``item_topics``) as their one category."""
    topic_of = topics.select(F.col("item_id"), F.array(F.col("topic")).alias("_topic"))
    uncategorised = F.size(F.coalesce(F.col("categories"), F.array())) == 0
    return (
        items.join(topic_of, "item_id", "left")
        .withColumn(
            "categories",
            F.when(uncategorised & F.col("_topic").isNotNull(), F.col("_topic")).otherwise(F.col("categories")),
        )
        .drop("_topic")
    )


def with_topic_fallback(spark: SparkSession, conf: Config, items: DataFrame) -> DataFrame:
    """Apply :func:`topics_as_categories` with the configured topic model when ``item_topics`` exists."""
    from driftrec.tables import ITEM_TOPICS
    from driftrec.topics import topic_model_name

    if not lakehouse.table_exists(spark, conf, ITEM_TOPICS):
        return items
    topics = lakehouse.read_table(spark, conf, ITEM_TOPICS).where(F.col("model") == topic_model_name(conf))
    return topics_as_categories(items, topics)
