"""``driftrec tune``: choose the blend and the engine's scoring knobs on the validation split, for the nightly.

The split holds out each user's latest event (users with at least three events; the leave-one-out rule of
:mod:`driftrec.evaluation.protocols`). A scratch lakehouse gets every other event, the migration state as of the
last of them and a freshly trained text-initialised model; :func:`TuneJob.search` then scores the held-out events
under every combination of :class:`driftrec.config.TuningConfig` (:mod:`driftrec.tuning`) and the choice goes to
``tuned_settings``, which the nightly top-k serves from then on (``topk.use_tuned``). Rerun it when the data's
character may have changed (weekly, say); ``driftrec evaluate`` runs the same search on its own validation split.

    driftrec tune --lakehouse /tmp/ml
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
import uuid
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, tuning
from driftrec.config import Config
from driftrec.evaluation import protocols
from driftrec.jobargs import base_parser, config_from_args
from driftrec.spark import build_spark
from driftrec.tables import EVENTS, USER_DRIFT
from jobs import scratch
from jobs.topk import TopKJob, latest_migrating

log = logging.getLogger("driftrec.tune")

TUNE_MODEL = "tune_text"


class TuneJob:
    def __init__(self, spark: SparkSession, conf: Config, run_id: str | None = None):
        self.spark, self.conf = spark, conf
        self.run_id = run_id or f"tune-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"

    def _users(self, sconf: Config, ds: dt.date, truth: DataFrame, prep) -> DataFrame:
        """The validation users' scorer rows with their held-out item and drift flag, sampled to ``max_users``."""
        t = self.conf.tuning
        truth = truth.select("user_id", F.col("item_id").alias("truth_item"))
        n = truth.count()
        if n > t.max_users:  # a deterministic sample: the same users on every rerun
            truth = truth.where((F.abs(F.xxhash64("user_id")) % n) < t.max_users)
        drift = latest_migrating(lakehouse.read_table(self.spark, sconf, USER_DRIFT), ds)
        return prep.users.drop("migrating").join(truth, "user_id").join(drift, "user_id", "left")

    def _stage(self, prep, users: DataFrame, stage: str, engines, blends, defaults=None):
        from spark_udfs.tuning import SUMS_SCHEMA, validation_udf

        spark = self.spark
        parts = self.conf.topk.partitions or spark.sparkContext.defaultParallelism
        udf = validation_udf(spark.sparkContext.broadcast(prep.assets), stage, engines, blends, self.conf.tuning.k,
                             64, defaults)
        return users.repartition(parts, "user_id").mapInPandas(udf, SUMS_SCHEMA).toPandas()

    def search(self, sconf: Config, ds: dt.date, truth: DataFrame, model_name: str) -> tuning.TunedSettings:
        """Score ``truth`` (user_id, item_id: each user's held-out event after ``ds``) from the scratch lakehouse's
        state as of ``ds`` and its model ``model_name``, under every combination; the choice and its evidence."""
        conf = self.conf
        t0 = time.perf_counter()
        engines, blends = tuning.engine_grid(conf), tuning.blend_grid(conf)
        widest = max(max(conf.tuning.recent_items), conf.migration.recent_items)
        kconf = scratch.with_sections(sconf, training={"model_name": model_name},
                                      topk={"all_users": True, "model_version": None, "use_tuned": False,
                                            "blend_weight": 0.5, "blend_weight_migrating": None,
                                            "candidate_threshold": 10**12},
                                      migration={"recent_items": widest})
        prep = TopKJob(self.spark, kconf, state_through=ds).prepare(ds + dt.timedelta(days=1))
        users = self._users(sconf, ds, truth, prep).localCheckpoint(eager=True)
        n_users = users.count()
        log.info("tune: %d validation users, %d engine and %d blend combinations", n_users, len(engines), len(blends))
        engine, engine_search = tuning.best_engine(self._stage(prep, users, tuning.ENGINE, engines, blends), engines)
        log.info("tune: engine %s (%.1f s)", engine, time.perf_counter() - t0)
        top = conf.topk
        defaults = (tuning.default_engine(conf), top.blend_weight, top.blend_weight_migrating, top.blend_mode)
        sums = self._stage(prep, users, tuning.BLEND, [engine], blends, defaults)
        chosen, score, blend_search = tuning.choose(sums[sums["stage"] == tuning.BLEND], conf, blends)
        default_sums = sums[sums["stage"] == tuning.DEFAULT]
        default = float(default_sums["gain"].sum() / max(int(default_sums["users"].sum()), 1))
        settings = {**engine.settings(), "topk": chosen}
        log.info("tune: chose %s: validation NDCG@%d %.4f (configured values %.4f) in %.1f s", settings,
                 conf.tuning.k, score, default, time.perf_counter() - t0)
        return tuning.TunedSettings(self.run_id, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), ds, settings,
                                    score, default, n_users, engine_search + blend_search)

    def run(self) -> tuning.TunedSettings:
        """The search on this lakehouse's own validation split, recorded in ``tuned_settings``."""
        spark, conf = self.spark, self.conf
        if not lakehouse.table_exists(spark, conf, EVENTS):
            raise RuntimeError("no events table: run the ingest job first")
        events = lakehouse.read_table(spark, conf, EVENTS)
        split = protocols.leave_one_out(events)  # the latest event of each user is the validation truth
        train = split.train.cache()
        through = train.agg(F.max("event_date")).first()[0]
        if through is None or split.truth.limit(1).count() == 0:
            raise ValueError("nothing to tune on: no user has the three events the validation split needs")
        work = conf.tuning.work_dir or lakehouse.join(lakehouse.Lakehouse.of(conf).evaluation_dir(), "tune")
        root = lakehouse.Lakehouse(work).local_path(operation="tuning's scratch lakehouse (set tuning.work_dir)")
        sconf = scratch.build_scratch(spark, conf, Path(root), "tune", train, through)
        epochs = conf.tuning.epochs or conf.training.epochs
        scratch.train_model(spark, sconf, TUNE_MODEL, through, use_text=True, epochs=epochs, seed=conf.training.seed)
        tuned = self.search(sconf, through, split.truth, TUNE_MODEL)
        tuning.record(spark, conf, tuned)
        train.unpersist()
        return tuned


def summary(tuned: tuning.TunedSettings, k: int) -> str:
    values = ", ".join(f"{key}={v}" for key, v in tuned.flat().items())
    return (f"tuned {tuned.run_id} on {tuned.users} validation users through {tuned.data_through}: {values}; "
            f"validation NDCG@{k} {tuned.validation_ndcg:.4f} (configured values {tuned.default_ndcg:.4f})")


def add_arguments(parser) -> None:
    parser.add_argument("--run-id", help="id of this search in tuned_settings (default: tune-<timestamp>)")


def run_from_args(spark: SparkSession, conf: Config, args) -> int:
    print(summary(TuneJob(spark, conf, args.run_id).run(), conf.tuning.k))
    return 0


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Choose the blend and the engine's scoring knobs on the validation split.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(build_spark(conf, app_name="driftrec-tune"), conf, args)


if __name__ == "__main__":
    sys.exit(entrypoint())
