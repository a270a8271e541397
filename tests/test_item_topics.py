"""Catalogues without categories: text-embedding topics become the migration engine's categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.categories import item_categories
from driftrec.tables import ITEM_TEXT_EMBEDDINGS, ITEM_TOPICS, ITEMS
from tests.conftest import make_conf
from tests.transfer_helpers import items_frame


def test_topics_cluster_uncategorised_items_and_feed_item_categories(spark, tmp_path):
    from jobs.embed_items import EmbedItemsJob

    # "always": one item has a category, so "auto" would leave this catalogue alone.
    conf = make_conf(tmp_path / "lh", "embeddings.topics_k=3", 'embeddings.topics="always"')
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 5
    planted = np.arange(30) % 3
    vecs = centres[planted] + rng.normal(scale=0.1, size=(30, 8))
    items = pd.DataFrame({"item_id": np.arange(30), "title": [f"t{i}" for i in range(30)],
                          "categories": [[] for _ in range(30)], "text": None})
    items.loc[0, "categories"] = ["given"]  # a real category wins over its topic
    lakehouse.merge_upsert(spark, conf, ITEMS, items_frame(spark, items))
    emb = spark.createDataFrame(
        pd.DataFrame({"item_id": np.arange(30), "model": "all-MiniLM-L6-v2", "content_hash": "h",
                      "embedding": [v.astype(np.float32).tolist() for v in vecs], "dim": 8}),
        "item_id bigint, model string, content_hash string, embedding array<float>, dim int",
    ).withColumn("updated_at", F.current_timestamp())
    lakehouse.merge_upsert(spark, conf, ITEM_TEXT_EMBEDDINGS, emb)

    job = EmbedItemsJob(spark, conf)
    assert job.run_topics() == 30
    topics = lakehouse.read_table(spark, conf, ITEM_TOPICS).toPandas().sort_values("item_id")
    assert set(topics["model"]) == {"kmeans3/all-MiniLM-L6-v2"}
    # The planted clusters are recovered exactly (up to naming).
    pairs = set(zip(planted, topics["topic"], strict=True))
    assert len(pairs) == 3 and len({t for _, t in pairs}) == 3
    assert job.run_topics() == 0  # the saved clustering is reused: nothing changes on a rerun

    cats = item_categories(spark, conf).toPandas().sort_values("item_id")
    assert cats["item_id"].tolist() == list(range(30)) and (cats["share"] == 1.0).all()
    assert cats["category"].iloc[0] == "given"
    assert cats["category"].iloc[1:].tolist() == topics["topic"].iloc[1:].tolist()
