"""The model a night serves: a registry version, loaded safely and grown to tonight's catalogue.

Training and the top-k job share this, so an item added since the model was trained is scored the same way by both:
through its text embedding and category (its id row starts at zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.categories import item_categories
from driftrec.config import Config
from driftrec.models.batches import ItemSpace, extend_space
from driftrec.models.protocol import SequenceModel
from driftrec.tables import ITEM_TEXT_EMBEDDINGS, ITEMS, MODEL_REGISTRY


class ModelVersionError(RuntimeError):
    """The requested model version cannot serve: missing, unregistered, unreadable or incompatible."""


@dataclass
class ServingModel:
    version: int
    checkpoint: str
    model: SequenceModel  # eval mode, grown to ``space``
    space: ItemSpace
    new_items: int  # items tonight's catalogue added to the trained space


def catalogue_side_info(spark: SparkSession, conf: Config, event_items: DataFrame, use_text: bool) -> pd.DataFrame:
    """``(item_id, category, embedding)`` for every item of the catalogue or the events (pandas, one row per item)."""
    from driftrec.training_data import item_side_info

    if lakehouse.table_exists(spark, conf, ITEMS):
        items = lakehouse.read_table(spark, conf, ITEMS).select("item_id")
    else:
        items = spark.createDataFrame([], "item_id bigint")
    emb = None
    if use_text and lakehouse.table_exists(spark, conf, ITEM_TEXT_EMBEDDINGS):
        emb = lakehouse.read_table(spark, conf, ITEM_TEXT_EMBEDDINGS).where(F.col("model") == conf.embeddings.model)
    return item_side_info(items, event_items.select("item_id"), item_categories(spark, conf), emb).toPandas()


def text_dim_of(side: pd.DataFrame) -> int:
    dims = {len(e) for e in side["embedding"] if e is not None and not isinstance(e, float)}
    return max(dims) if dims else 1


def grow_to_catalogue(model: SequenceModel, space: ItemSpace,
                      side: pd.DataFrame) -> tuple[SequenceModel, ItemSpace]:
    """The model with room for tonight's new items and categories, their text and categories filled in."""
    grown_space = extend_space(space.item_ids, space.categories, side, model.p.text_dim)
    grown = model.grow(grown_space.n_items, len(grown_space.categories))
    grown.set_side_info(grown_space.text, grown_space.has_text, grown_space.item_category)
    grown.eval()
    return grown, grown_space


def registry_row(spark: SparkSession, conf: Config, version: int | None):
    """The current version of ``training.model_name``, or ``version`` when given; a clear error when absent."""
    from driftrec import registry

    name = conf.training.model_name
    if version is None:
        row = registry.current(spark, conf, name)
        if row is None:
            raise ModelVersionError(f"no current '{name}' model in model_registry: run the training job first")
        return row
    if not lakehouse.table_exists(spark, conf, MODEL_REGISTRY):
        raise ModelVersionError(f"model version {version} requested but there is no model_registry table")
    rows = (
        lakehouse.read_table(spark, conf, MODEL_REGISTRY)
        .where((F.col("version") == version) & (F.col("model_name") == name))
        .collect()
    )
    if not rows:
        raise ModelVersionError(f"model version {version} of '{name}' is not in model_registry")
    return rows[0]


def load_serving_model(spark: SparkSession, conf: Config, event_items: DataFrame,
                       version: int | None = None) -> ServingModel:
    """Load and check the model, then grow it to the catalogue: every failure here happens before any write."""
    from driftrec.models.checkpoint import load_checkpoint

    row = registry_row(spark, conf, version)
    path = str(row["checkpoint"])
    if not lakehouse.Lakehouse.of(conf).is_dir(path):
        raise ModelVersionError(f"model v{row['version']}: checkpoint directory {path} does not exist")
    try:
        model, space, _ = load_checkpoint(path)
    except Exception as e:  # a truncated or foreign file: name the version and the file, keep the cause
        raise ModelVersionError(f"model v{row['version']}: cannot load checkpoint {path}: {e}") from e
    if space.n_items == 0:
        raise ModelVersionError(f"model v{row['version']}: checkpoint {path} has an empty item space")
    side = catalogue_side_info(spark, conf, event_items, model.p.use_text)
    dim = text_dim_of(side)
    if model.p.use_text and dim != model.p.text_dim and side["embedding"].notna().any():
        raise ModelVersionError(
            f"model v{row['version']} was trained on {model.p.text_dim}-dim text vectors but item_text_embeddings "
            f"for '{conf.embeddings.model}' have {dim}: retrain, or set embeddings.model to the model's text encoder"
        )
    grown, grown_space = grow_to_catalogue(model, space, side)
    probe = grown.item_vectors()
    if not bool(np.isfinite(probe.detach().numpy()).all()):
        raise ModelVersionError(f"model v{row['version']}: checkpoint {path} holds non-finite weights")
    return ServingModel(int(row["version"]), path, grown, grown_space, grown_space.n_items - space.n_items)
