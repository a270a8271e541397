"""Item text embedding job: encode new or changed items into ``item_text_embeddings`` (and topics if needed).

An item is (re-)encoded only when no vector exists for its current ``content_hash`` under the configured model, so
a nightly run costs in proportion to the catalogue's changes. Encoding runs in Spark tasks (``mapInPandas``), one
model load per Python worker, so a large catalogue spreads over the cluster. When the catalogue has no categories
(``embeddings.topics = "auto"``) the vectors are clustered into interest topics (``item_topics``) that
:func:`driftrec.categories.item_categories` then serves to the migration engine.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.jobargs import add_run_id, base_parser, config_from_args, parse_date
from driftrec.spark import build_spark
from driftrec.stage_runs import StageResult, run_recorded
from driftrec.tables import ITEM_TEXT_EMBEDDINGS, ITEM_TOPICS, ITEMS

log = logging.getLogger("driftrec.embed_items")


@dataclass
class EmbedReport:
    candidates: int  # items with text whose current content has no vector yet
    inserted: int
    updated: int
    topics_assigned: int = 0

    def summary(self) -> str:
        return (
            f"embed_items: {self.candidates} new/changed items encoded ({self.inserted} inserted, "
            f"{self.updated} updated); {self.topics_assigned} topic assignments written"
        )


def items_to_encode(items: DataFrame, existing: DataFrame | None, model: str) -> DataFrame:
    """Items with some text whose (item_id, content_hash) has no vector for ``model`` yet."""
    has_text = (F.length(F.trim(F.coalesce(F.col("title"), F.lit("")))) > 0) | (
        F.length(F.trim(F.coalesce(F.col("text"), F.lit("")))) > 0
    )
    todo = items.where(has_text).select("item_id", "title", "categories", "text", "content_hash")
    if existing is None:
        return todo
    done = existing.where(F.col("model") == model).select("item_id", "content_hash")
    return todo.join(done, ["item_id", "content_hash"], "left_anti")


class EmbedItemsJob:
    def __init__(self, spark: SparkSession, conf: Config):
        self.spark = spark
        self.conf = conf

    def run(self) -> EmbedReport:
        from spark_udfs.text_embeddings import EMBEDDING_SCHEMA, encode_items_udf

        spark, conf, e = self.spark, self.conf, self.conf.embeddings
        if not lakehouse.table_exists(spark, conf, ITEMS):
            raise RuntimeError("no items table: run the ingest job first")
        items = lakehouse.read_table(spark, conf, ITEMS)
        existing = (
            lakehouse.read_table(spark, conf, ITEM_TEXT_EMBEDDINGS)
            if lakehouse.table_exists(spark, conf, ITEM_TEXT_EMBEDDINGS)
            else None
        )
        todo = items_to_encode(items, existing, e.model).cache()
        n = todo.count()
        inserted = updated = 0
        if n:
            parts = max(1, math.ceil(n / e.rows_per_partition))
            vectors = (
                todo.repartition(parts, "item_id")
                .mapInPandas(encode_items_udf(e.model, e.model_path, e.batch_size, e.max_length), EMBEDDING_SCHEMA)
                .withColumn("updated_at", F.current_timestamp())
            )
            result = lakehouse.merge_upsert(
                spark, conf, ITEM_TEXT_EMBEDDINGS, vectors, update_when="t.content_hash <> s.content_hash"
            )
            inserted, updated = result.inserted, result.updated
        todo.unpersist()
        topics = self.run_topics(items) if n or e.topics == "always" else 0
        report = EmbedReport(candidates=n, inserted=inserted, updated=updated, topics_assigned=topics)
        log.info(report.summary())
        return report

    def run_topics(self, items: DataFrame | None = None) -> int:
        """Assign interest topics when the catalogue needs them; returns topic rows inserted or changed."""
        from driftrec.topics import assign_topics, fit_or_load, topic_model_name

        spark, conf, e = self.spark, self.conf, self.conf.embeddings
        if e.topics == "never":
            return 0
        items = lakehouse.read_table(spark, conf, ITEMS) if items is None else items
        if e.topics == "auto" and items.where(F.size(F.coalesce("categories", F.array())) > 0).limit(1).count():
            return 0
        vectors = lakehouse.read_table(spark, conf, ITEM_TEXT_EMBEDDINGS).where(F.col("model") == e.model)
        if vectors.limit(e.topics_k).count() < e.topics_k:
            log.warning("fewer embedded items than topics_k=%d: no topics", e.topics_k)
            return 0
        topics = assign_topics(fit_or_load(vectors, conf), vectors, topic_model_name(conf))
        r = lakehouse.merge_upsert(spark, conf, ITEM_TOPICS, topics, update_when="t.topic <> s.topic")
        return r.inserted + r.updated


def add_arguments(parser) -> None:
    """The job encodes whatever items are new or changed; the date only names the night in ``pipeline_runs``."""
    parser.add_argument("--date", type=parse_date,
                        help="the night this run belongs to in pipeline_runs (YYYY-MM-DD; default: today, UTC)")
    add_run_id(parser)


def run_stage(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    """The nightly ``embed_items`` stage and what it read and wrote (the night does not change what it encodes)."""
    rep = EmbedItemsJob(spark, conf).run()
    return StageResult(rows_in=rep.candidates, rows_out=rep.inserted + rep.updated, detail=rep.summary())


def run_from_args(spark: SparkSession, conf: Config, args) -> StageResult:
    """The stage, recorded in ``pipeline_runs`` like a nightly run records it."""
    ds = args.date or dt.datetime.now(dt.UTC).date()
    return run_recorded(spark, conf, ds, "embed_items", lambda: run_stage(spark, conf, ds), args.run_id)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Encode new or changed items' text with the pretrained sentence encoder.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = build_spark(conf, app_name="driftrec-embed-items")
    print(run_from_args(spark, conf, args).detail)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
