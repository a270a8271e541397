"""Nightly training job: events -> training sequences (Delta) -> Ray Train (``training.model``) -> gated registry.

Tonight's run warm-starts from the current registered model (its item table grown for new items from their text
embeddings) and fine-tunes on the last ``training.finetune_window_days``; without a current model it trains from
scratch. The candidate is published to ``<lakehouse>/models/<name>/vNNNNN`` and becomes current only if its
validation NDCG@10 on tonight's held-out most recent events is within ``training.ndcg_tolerance`` of the current
model's on the same events; the run's report says why.

Ray: ``ray.init()`` starts a local Ray unless ``training.ray_address`` names a cluster (or the job runs under
``ray job submit``, which sets RAY_ADDRESS)::

    ray job submit --working-dir . -- python -m jobs.train --date 2026-01-31 --set training.num_workers=4
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, registry, sqltext
from driftrec.config import Config
from driftrec.jobargs import add_run_id, base_parser, config_from_args, parse_date
from driftrec.models.batches import ItemSpace, extend_space, valid_batch
from driftrec.models.evaluation import hit_rate_at_k, ndcg_at_k, popularity_scores, target_ranks, valid_ranks
from driftrec.models.protocol import SequenceModel, model_class, new_model
from driftrec.spark import build_spark
from driftrec.stage_runs import StageResult, run_recorded
from driftrec.tables import EVENTS, TRAINING_SEQUENCES, USER_INTEREST

log = logging.getLogger("driftrec.train")


@dataclass
class TrainReport:
    version: int
    trained_through: str
    promoted: bool
    reason: str
    warm_start_from: int | None
    checkpoint: str
    metrics: dict = field(default_factory=dict)

    def summary(self) -> str:
        state = "PROMOTED to current" if self.promoted else "NOT promoted"
        m = self.metrics
        # The checkpoint holds the best epoch by validation NDCG@10 (early stopping), not necessarily the last.
        epochs = f"best epoch {m['best_epoch']} of {m['epochs_run']} run; " if "epochs_run" in m else ""
        return (
            f"model v{self.version} (trained through {self.trained_through}, "
            f"{'warm start from v' + str(self.warm_start_from) if self.warm_start_from else 'cold start'}): "
            f"{state}: {self.reason}\n  NDCG@10 {m.get('ndcg_at_10', float('nan')):.4f}, "
            f"current model {m.get('current_ndcg_at_10', float('nan')):.4f}, "
            f"popularity {m.get('popularity_ndcg_at_10', float('nan')):.4f} on {m.get('valid_users', 0)} users; "
            f"{epochs}{m.get('steady_samples_per_s', float('nan')):.0f} samples/s; checkpoint {self.checkpoint}"
        )


def popularity_ranks(counts: pd.DataFrame, space: ItemSpace, valid: pd.DataFrame) -> np.ndarray:
    c = counts.set_index("item_id")["n"].reindex(space.item_ids).fillna(0).to_numpy()
    b = valid_batch(valid, space.index(), space.category_index(), len(space.categories), 2)
    return target_ranks(popularity_scores(c, len(valid)), b["target"] - 1)


def model_from_space(space: ItemSpace, conf: Config) -> SequenceModel:
    return new_model(conf.training.model, space, conf.training)


class SequenceFiles(NamedTuple):
    """Tonight's pinned training_sequences partition: its data files (URIs) and their bytes on storage."""

    uris: list[str]
    bytes: int


class Current(NamedTuple):
    """The current registered model, loaded: its registry row, the model and its item space."""

    row: object
    model: SequenceModel
    space: ItemSpace


@dataclass
class Start:
    """Where tonight's training starts: the current model grown to tonight's catalogue, or (``model`` None) cold."""

    space: ItemSpace  # tonight's item space
    model: SequenceModel | None  # the grown current model (eval mode); None: train from scratch
    parent: int | None  # the current model's version when warm
    prior_items: int  # items the current model knew (0 when cold)
    window_start: int  # epoch seconds: warm starts weight only targets from here on
    reason_cold: str = ""


def plan_start(current: Current | None, side: pd.DataFrame, ds: dt.date, conf: Config) -> Start:
    """Warm start from ``current`` when its class, architecture and text model
    match tonight's configuration; cold otherwise (with the reason when there was a current model)."""
    from driftrec.serving import grow_to_catalogue, text_dim_of

    t = conf.training
    text_dim = text_dim_of(side)
    if current is not None:
        row, old, old_space = current
        if isinstance(old, model_class(t.model)) and old.warm_startable(t, text_dim):
            grown, space = grow_to_catalogue(old, old_space, side)
            start = ds + dt.timedelta(days=1 - t.finetune_window_days)
            window_start = int(dt.datetime.combine(start, dt.time(), dt.UTC).timestamp())
            return Start(space, grown, int(row["version"]), old_space.n_items, window_start)
    reason = "architecture or text model changed since the current model; cold start" if current is not None else ""
    return Start(extend_space(np.zeros(0, np.int64), [], side, text_dim), None, None, 0, 0, reason)


def validation_metrics(candidate: SequenceModel, cand_space: ItemSpace, valid: pd.DataFrame, pop: pd.DataFrame,
                       start: Start, current: Current | None, fit_metrics: dict, sequences_version: int) -> dict:
    """The candidate's, popularity's and (like-for-like, on the same held-out events) the current model's scores."""
    ranks = valid_ranks(candidate, cand_space, valid)
    pop_ranks = popularity_ranks(pop, cand_space, valid)
    metrics = {
        "ndcg_at_10": ndcg_at_k(ranks, 10),
        "hit_rate_at_10": hit_rate_at_k(ranks, 10),
        "popularity_ndcg_at_10": ndcg_at_k(pop_ranks, 10),
        "valid_users": len(valid),
        "n_items": start.space.n_items,
        "new_items": start.space.n_items - start.prior_items,
        "sequences_version": sequences_version,
        **{k: fit_metrics[k] for k in ("loss", "samples_per_s", "steady_samples_per_s", "world_size", "torch_threads",
                                       "best_epoch", "epochs_run", "valid_ndcg_at_10_best") if k in fit_metrics},
    }
    if current is not None:
        # The current model, grown to tonight's items when warm, on tonight's held-out events.
        row, old, old_space = current
        model, space = (start.model, start.space) if start.model is not None else (old, old_space)
        metrics["current_version"] = int(row["version"])
        metrics["current_ndcg_at_10"] = ndcg_at_k(valid_ranks(model, space, valid), 10)
    return metrics


class TrainJob:
    def __init__(self, spark: SparkSession, conf: Config):
        self.spark = spark
        self.conf = conf

    # -- inputs ------------------------------------------------------------------------------------------------
    def _events(self, ds: dt.date) -> DataFrame:
        if not lakehouse.table_exists(self.spark, self.conf, EVENTS):
            raise RuntimeError("no events table: run the ingest job first")
        return lakehouse.read_table(self.spark, self.conf, EVENTS).where(F.col("event_date") <= F.lit(ds))

    def _interest(self) -> DataFrame | None:
        if not lakehouse.table_exists(self.spark, self.conf, USER_INTEREST):
            return None
        return lakehouse.read_table(self.spark, self.conf, USER_INTEREST)

    def _side_info(self, events: DataFrame) -> pd.DataFrame:
        from driftrec.serving import catalogue_side_info

        return catalogue_side_info(self.spark, self.conf, events, self.conf.training.use_text)

    def _write_sequences(self, events: DataFrame, ds: dt.date) -> tuple[SequenceFiles, int]:
        """Write tonight's sequences; ``(that partition's Parquet files and bytes, table version)`` pinned at the
        write. The URIs are as pyarrow (which both training reads use) knows them."""
        from driftrec.training_data import build_sequences

        t = self.conf.training
        seqs = build_sequences(events, ds, max_seq_len=t.max_seq_len, max_chunks=t.max_chunks_per_user,
                               min_valid_events=t.min_valid_events, interest=self._interest())
        lakehouse.replace_where(self.spark, self.conf, TRAINING_SEQUENCES, seqs, sqltext.equals("ds", ds),
                                metrics=False)
        version = lakehouse.table_version(self.spark, self.conf, TRAINING_SEQUENCES)
        # Written only by whole-partition replaces (no deletion vectors), so the files are the snapshot.
        part = {"ds": ds.isoformat()}
        uris = [lakehouse.Lakehouse.pyarrow_uri(u)
                for u in lakehouse.snapshot_files(self.conf, TRAINING_SEQUENCES, version, part)]
        size = lakehouse.snapshot_bytes(self.conf, TRAINING_SEQUENCES, version, part) if uris else 0
        files = SequenceFiles(uris, size)
        log.info("training_sequences v%s: %d files (%d bytes) for ds=%s", version, len(files.uris), files.bytes, ds)
        return files, int(version)

    def _valid(self, ds: dt.date, sequences_version: int) -> pd.DataFrame:
        t = self.conf.training
        return (
            lakehouse.read_table_at(self.spark, self.conf, TRAINING_SEQUENCES, sequences_version)
            .where((F.col("ds") == F.lit(ds)) & (F.col("split") == "valid"))
            .orderBy(F.xxhash64("user_id"), "user_id")
            .limit(t.max_valid_users)
            .toPandas()
        )

    def _current(self) -> Current | None:
        """The current model when warm starts are on; an unusable
        checkpoint stops the run before anything is written."""
        from driftrec.models.checkpoint import CheckpointError, load_checkpoint

        t = self.conf.training
        cur = registry.current(self.spark, self.conf, t.model_name) if t.warm_start else None
        if cur is None:
            return None
        try:
            old, old_space, _ = load_checkpoint(cur["checkpoint"])
        except CheckpointError as e:
            raise CheckpointError(
                f"cannot warm-start from the current model v{cur['version']}: {e}. Nothing was trained or "
                f"recorded; v{cur['version']} stays current. Restore its checkpoint directory, or train cold "
                "with --set training.warm_start=false"
            ) from e
        return Current(cur, old, old_space)

    def _fit(self, files: SequenceFiles, start: Start, ds: dt.date, version: int, valid: pd.DataFrame | None = None):
        """Ray Train on tonight's sequences; ``(fit result, published checkpoint directory)``.

        ``valid``: the held-out rows the loop scores after every epoch for early stopping (None: every epoch runs).
        """
        from ray_trainers import sasrec_trainer
        from ray_trainers.data import training_dataset
        from ray_trainers.session import ensure_ray

        conf, t = self.conf, self.conf.training
        ensure_ray(t.ray_address or None)
        train_ds = training_dataset(files.uris, files.bytes, int(t.driver_read_max_mb * 2**20), t.num_workers,
                                    t.materialize_data)
        lake = lakehouse.Lakehouse.of(conf)
        fit = sasrec_trainer.fit(
            train_ds, start.space, model_class(t.model).params_for(start.space, t), t,
            storage_path=t.storage_path or lake.ray_results_dir(),
            run_name=f"{t.model_name}-{ds.isoformat()}-v{version:05d}",
            init_state=start.model.state_dict() if start.model is not None else None,
            window_start=start.window_start,
            epochs=t.warm_epochs if start.model is not None else t.epochs,
            meta={"version": version, "trained_through": ds.isoformat(), "text_model": conf.embeddings.model},
            valid=valid,
        )
        published = lake.model_version_dir(t.model_name, version)
        if lake.is_local:
            fit.checkpoint.to_directory(str(lake.local_path(published)))
        else:  # object store: materialise locally, upload the same files
            with tempfile.TemporaryDirectory(prefix="driftrec-model-") as tmp:
                fit.checkpoint.to_directory(tmp)
                lake.upload_dir(tmp, published)
        return fit, published

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self, ds: dt.date) -> TrainReport:
        """Read (current model, events, side information) -> sequences -> train -> validate -> record."""
        from driftrec.models.checkpoint import load_checkpoint
        from driftrec.training_data import training_popularity

        spark, conf, t = self.spark, self.conf, self.conf.training
        model_class(t.model)  # an unknown training.model, like a bad checkpoint, fails the run before any write
        current = self._current()
        events = self._events(ds)
        files, sequences_version = self._write_sequences(events, ds)
        if not files.uris:
            raise RuntimeError(f"no training sequences for {ds}: no events on or before it?")
        start = plan_start(current, self._side_info(events), ds, conf)

        version = registry.next_version(spark, conf)
        # Read before training: early stopping scores these rows after every epoch, and the gate below scores the
        # kept (best) epoch on them again.
        valid = self._valid(ds, sequences_version)
        fit, published = self._fit(files, start, ds, version, valid if t.early_stopping_patience else None)
        pop = training_popularity(events, t.min_valid_events).toPandas()
        candidate, cand_space, _ = load_checkpoint(published)
        metrics = validation_metrics(candidate, cand_space, valid, pop, start, current, fit.metrics,
                                     sequences_version)
        decision = registry.decide(metrics["ndcg_at_10"], metrics.get("current_ndcg_at_10"), t.ndcg_tolerance)
        reason = f"{start.reason_cold}; {decision.reason}" if start.reason_cold else decision.reason
        decision = registry.Decision(decision.promote, reason)
        registry.record(spark, conf, version=version, model_name=t.model_name, trained_through=ds,
                        parent_version=start.parent, config=json.loads(t.model_dump_json()), metrics=metrics,
                        checkpoint=str(published), decision=decision)
        report = TrainReport(version=version, trained_through=ds.isoformat(), promoted=decision.promote,
                             reason=reason, warm_start_from=start.parent, checkpoint=str(published),
                             metrics=metrics)
        log.info(report.summary())
        return report


def add_arguments(parser) -> None:
    parser.add_argument("--date", type=parse_date, required=True, help="trained-through date (YYYY-MM-DD)")
    add_run_id(parser)


def run_stage(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    """The nightly ``train`` stage and what it read and wrote; the model version is the one current after it."""
    rep = TrainJob(spark, conf).run(ds)
    cur = registry.current(spark, conf, conf.training.model_name)
    return StageResult(rows_in=rep.metrics.get("valid_users"), rows_out=1,
                       model_version=int(cur["version"]) if cur is not None else None, detail=rep.summary())


def run_from_args(spark: SparkSession, conf: Config, args) -> StageResult:
    """The stage, recorded in ``pipeline_runs`` like a nightly run records it."""
    return run_recorded(spark, conf, args.date, "train", lambda: run_stage(spark, conf, args.date), args.run_id)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the Spark master and (via config) Ray's address."""
    parser = base_parser("Train the sequential recommender with Ray Train and gate it through the model registry.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = build_spark(conf, app_name="driftrec-train")
    print(run_from_args(spark, conf, args).detail)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
