"""Scratch lakehouses: a split's visible events with the catalogue, its embeddings and the migration state.

``driftrec evaluate`` builds one per protocol and ``driftrec tune`` one for its validation split; both then run the
product's own stages (training, top-k) on it, so nothing they read was computed from the held-out events.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import ITEM_TEXT_EMBEDDINGS, ITEM_TOPICS, ITEMS, SCRATCH_EVENTS
from jobs.embed_items import EmbedItemsJob
from jobs.migrate import MigrationJob


def with_sections(conf: Config, **sections) -> Config:
    """``conf`` with some keys of some sections replaced, e.g. ``training={"epochs": 3}``."""
    data = conf.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return Config.model_validate(data)


def scratch_conf(conf: Config, root: Path, name: str) -> Config:
    """``conf`` pointed at the local scratch root ``root``, registered in its own catalog database."""
    return with_sections(conf, lakehouse={"root": str(root), "database": f"{conf.lakehouse.database}_eval_{name}"})


def build_scratch(spark: SparkSession, conf: Config, root: Path, name: str, train: DataFrame, cutoff: dt.date,
                  embedded_from: Config | None = None) -> Config:
    """A fresh lakehouse at ``root`` with ``train`` (as :data:`SCRATCH_EVENTS`: not by day), ``conf``'s catalogue, its
    embeddings and the migration state as of ``cutoff`` (one pass). Embeddings already computed in ``conf`` or
    ``embedded_from`` are copied, not recomputed (text is not an event statistic)."""
    sconf = scratch_conf(conf, root, name)
    spark.sql(f"DROP DATABASE IF EXISTS {sconf.lakehouse.database} CASCADE")  # registrations only (external)
    shutil.rmtree(root, ignore_errors=True)
    lakehouse.forget_ensured(sconf)  # tables and registrations just deleted: create them again
    lakehouse.ensure_database(spark, sconf)
    # Ensured as "events" for this process, so the stages that follow (reading it by path) never re-create it by day.
    lakehouse.ensure_table(spark, sconf, SCRATCH_EVENTS)
    files = max(1, sconf.spark.shuffle_partitions)
    lakehouse.append(spark, sconf, SCRATCH_EVENTS,
                     train.repartitionByRange(files, "event_date").sortWithinPartitions("event_date", "user_id"))
    lakehouse.append(spark, sconf, ITEMS, lakehouse.read_table(spark, conf, ITEMS))
    for source in (conf, embedded_from):
        if source is not None and lakehouse.table_exists(spark, source, ITEM_TEXT_EMBEDDINGS):
            lakehouse.merge_upsert(spark, sconf, ITEM_TEXT_EMBEDDINGS,
                                   lakehouse.read_table(spark, source, ITEM_TEXT_EMBEDDINGS))
            if lakehouse.table_exists(spark, source, ITEM_TOPICS):
                lakehouse.merge_upsert(spark, sconf, ITEM_TOPICS, lakehouse.read_table(spark, source, ITEM_TOPICS))
            break
    EmbedItemsJob(spark, sconf).run()
    MigrationJob(spark, sconf).rebuild(cutoff)
    return sconf


def train_model(spark: SparkSession, sconf: Config, name: str, through: dt.date, *, use_text: bool, epochs: int,
                seed: int) -> float:
    """Train a fresh model ``name`` in the scratch lakehouse on its events through ``through``; seconds taken."""
    from jobs.train import TrainJob  # lazily: torch

    t0 = time.perf_counter()
    tconf = with_sections(sconf, training={"use_text": use_text, "model_name": name, "epochs": epochs,
                                           "warm_start": False, "seed": seed})
    TrainJob(spark, tconf).run(through)
    return round(time.perf_counter() - t0, 1)
