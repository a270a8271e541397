"""Model registry (a Delta table): every trained version, and which one is current.

A candidate becomes current only if its validation NDCG@10 is not worse than the current model's on the same
held-out events by more than the tolerance. Promotion (new row current, old row not) is one MERGE, so readers never
see zero or two current versions.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config
from driftrec.tables import MODEL_REGISTRY


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate_ndcg: float, current_ndcg: float | None, tolerance: float) -> Decision:
    """Promote unless the candidate's NDCG@10 is below the current one's by more than ``tolerance``."""
    if math.isnan(candidate_ndcg):
        return Decision(False, "candidate NDCG@10 is undefined (no validation events)")
    if current_ndcg is None or math.isnan(current_ndcg):
        return Decision(True, f"no current model to beat; NDCG@10 {candidate_ndcg:.4f}")
    delta = candidate_ndcg - current_ndcg
    if delta < -tolerance:
        return Decision(
            False,
            f"NDCG@10 {candidate_ndcg:.4f} is {-delta:.4f} below the current model's {current_ndcg:.4f} "
            f"(tolerance {tolerance:g}); the current model stays",
        )
    return Decision(True, f"NDCG@10 {candidate_ndcg:.4f} vs current {current_ndcg:.4f} (tolerance {tolerance:g})")


def current(spark: SparkSession, conf: Config, model_name: str) -> Row | None:
    if not lakehouse.table_exists(spark, conf, MODEL_REGISTRY):
        return None
    rows = (
        lakehouse.read_table(spark, conf, MODEL_REGISTRY)
        .where((F.col("model_name") == model_name) & F.col("is_current"))
        .orderBy(F.col("version").desc())
        .limit(1)
        .collect()
    )
    return rows[0] if rows else None


def next_version(spark: SparkSession, conf: Config) -> int:
    if not lakehouse.table_exists(spark, conf, MODEL_REGISTRY):
        return 1
    top = lakehouse.read_table(spark, conf, MODEL_REGISTRY).agg(F.max("version")).first()[0]
    return int(top or 0) + 1


def record(
    spark: SparkSession,
    conf: Config,
    *,
    version: int,
    model_name: str,
    trained_through: dt.date,
    parent_version: int | None,
    config: dict,
    metrics: dict,
    checkpoint: str,
    decision: Decision,
) -> None:
    """Insert the version; when promoted, the previous current row is flipped in the same MERGE."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    new = {
        "version": version,
        "model_name": model_name,
        "trained_through": trained_through,
        "parent_version": parent_version,
        "config_json": json.dumps(config, sort_keys=True),
        "metrics_json": json.dumps(metrics, sort_keys=True),
        "ndcg_at_10": float(metrics.get("ndcg_at_10", float("nan"))),
        "checkpoint": checkpoint,
        "is_current": decision.promote,
        "decision": decision.reason,
        "created_at": now,
    }
    rows = [new]
    if decision.promote:
        old = current(spark, conf, model_name)
        if old is not None:
            rows.append({**old.asDict(), "is_current": False})
    df = spark.createDataFrame(rows, MODEL_REGISTRY.schema)
    lakehouse.merge_upsert(spark, conf, MODEL_REGISTRY, df, update_when="s.is_current <> t.is_current")
