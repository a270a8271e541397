"""Offline evaluation: every system on the same split, ranked against the full catalogue, into ``evaluation_runs``.

For each protocol (:mod:`driftrec.evaluation.protocols`) the job builds a scratch lakehouse holding only the split's
training events and the catalogue, and runs the product's own stages on it: the migration state as of the cutoff
(one pass, :mod:`driftrec.migration.bulk`), text embeddings, two trainings (text-initialised and random), and the
top-k job with different blend weights. Nothing the systems read was computed from events after the cutoff: they
are not in the scratch lakehouse at all. Systems:

* ``popular_all_time`` / ``popular_recent`` (the ``evaluation.recent_days`` before the cutoff);
* ``als``: Spark MLlib implicit ALS;
* ``markov_item``: the plain first-order item Markov chain, the row of the user's last item
  (:mod:`driftrec.evaluation.markov`);
* ``migration``: the migration engine alone (blend weight 1);
* ``sasrec_random``: the sequential model without text initialisation, alone (blend weight 0);
* ``sasrec_text``: the text-initialised model alone;
* ``pipeline``: the text-initialised model blended with the migration engine (``topk.blend_weight``).

The peers, what users run today (:data:`driftrec.evaluation.report.PEERS`), are ``popular_*``, ``als``,
``markov_item`` and ``sasrec_random``; the report and the printed table show the best of them per protocol, segment,
metric and K, and each driftrec system's ratio to it (``config_json`` of every stored row lists the peers).

Metrics (HR, Recall, NDCG, MRR at each K, coverage) are written overall and for migrating / stable users (their
latest ``user_drift`` row as of the cutoff), with the run's configuration, replacing any earlier rows of the same
``run_id``. An HTML report with plots goes next to the scratch lakehouses.

    driftrec ingest --movielens ../shared/data/ml-latest-small --lakehouse /tmp/ml
    driftrec evaluate --lakehouse /tmp/ml --dataset ml-latest-small
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, sqltext
from driftrec.config import Config
from driftrec.evaluation import baselines, metrics, protocols
from driftrec.evaluation.report import PEERS, peer_table, versus_best_peer
from driftrec.evaluation.views import latest_drift
from driftrec.jobargs import base_parser, config_from_args
from driftrec.spark import build_spark
from driftrec.tables import EVALUATION_RUNS, EVENTS, ITEM_TEXT_EMBEDDINGS, ITEM_TOPICS, ITEMS
from jobs.embed_items import EmbedItemsJob
from jobs.migrate import MigrationJob

log = logging.getLogger("driftrec.evaluate")

MODEL_SYSTEMS = {  # system -> (trained model, blend weight; None = topk.blend_weight)
    "migration": ("text", 1.0),
    "sasrec_random": ("random", 0.0),
    "sasrec_text": ("text", 0.0),
    "pipeline": ("text", None),
}


@dataclass
class ProtocolResult:
    protocol: str
    cutoff: dt.date
    truth_users: int
    recs: dict[str, DataFrame] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    conf: Config | None = None
    truth: DataFrame | None = None


@dataclass
class EvaluationReport:
    run_id: str
    rows: pd.DataFrame  # protocol, system, segment, k, metric, value, users
    results: list[ProtocolResult]
    report_path: Path | None
    seconds: float

    def table(self, k: int = 10) -> pd.DataFrame:
        """Systems x (protocol, metric) at cut-off ``k``, overall segment."""
        sel = self.rows[(self.rows["segment"] == "all") & (self.rows["k"] == k)]
        return sel.pivot_table(index="system", columns=["protocol", "metric"], values="value")

    def versus_peers(self, k: int = 10, metrics: tuple[str, ...] = ("ndcg", "hr")) -> pd.DataFrame:
        """Per protocol and metric at ``k``, overall segment: the best peer, its value, each driftrec system's ratio."""
        versus = versus_best_peer(self.rows)
        versus = versus[(versus["segment"] == "all") & (versus["k"] == k) & versus["metric"].isin(metrics)]
        return peer_table(versus).droplevel(["segment", "k"])


def _scratch_conf(conf: Config, root: Path, protocol: str, **sections) -> Config:
    data = conf.model_dump()
    data["lakehouse"] = {**data["lakehouse"], "root": str(root), "database": f"{conf.lakehouse.database}_eval_{protocol}"}
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return Config.model_validate(data)


class EvaluationJob:
    def __init__(self, spark: SparkSession, conf: Config, dataset: str, run_id: str | None = None):
        self.spark, self.conf, self.dataset = spark, conf, dataset
        self.ev = conf.evaluation
        self.run_id = run_id or f"{dataset}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        # Scratch lakehouses are cleared with shutil.rmtree and the report is written with open(): a local folder.
        work = self.ev.work_dir or lakehouse.Lakehouse.of(conf).evaluation_dir()
        self.work = lakehouse.Lakehouse(work).local_path(
            operation="evaluation's scratch lakehouses (set evaluation.work_dir to a local folder)")

    # ---- splits ------------------------------------------------------------------------------------------------
    def split(self, protocol: str, events: DataFrame) -> tuple[protocols.Split, dt.date]:
        """The split and the date everything is built through (the cutoff, or the last training day)."""
        if protocol == "temporal":
            cutoff = (dt.date.fromisoformat(self.ev.cutoff) if self.ev.cutoff
                      else protocols.quantile_cutoff(events, self.ev.cutoff_quantile))
            return protocols.temporal(events, cutoff, self.ev.horizon_days,
                                      self.ev.temporal_next_items or None), cutoff
        split = protocols.leave_one_out(events)
        return split, split.train.agg(F.max("event_date")).first()[0]

    # ---- scratch lakehouse -------------------------------------------------------------------------------------
    def scratch(self, protocol: str, train: DataFrame, cutoff: dt.date, embedded_from: Config | None) -> Config:
        """A fresh lakehouse with the training events, the catalogue, its embeddings and the migration state."""
        spark = self.spark
        root = self.work / protocol
        sconf = _scratch_conf(self.conf, root, protocol)
        spark.sql(f"DROP DATABASE IF EXISTS {sconf.lakehouse.database} CASCADE")  # registrations only (external)
        shutil.rmtree(root, ignore_errors=True)
        lakehouse.forget_ensured(sconf)  # tables and registrations just deleted: create them again
        lakehouse.ensure_database(spark, sconf)
        lakehouse.append(spark, sconf, EVENTS, train)
        lakehouse.append(spark, sconf, ITEMS, lakehouse.read_table(spark, self.conf, ITEMS))
        for source in (self.conf, embedded_from):  # reuse vectors already computed (text is not an event statistic)
            if source is not None and lakehouse.table_exists(spark, source, ITEM_TEXT_EMBEDDINGS):
                lakehouse.merge_upsert(spark, sconf, ITEM_TEXT_EMBEDDINGS,
                                       lakehouse.read_table(spark, source, ITEM_TEXT_EMBEDDINGS))
                if lakehouse.table_exists(spark, source, ITEM_TOPICS):
                    lakehouse.merge_upsert(spark, sconf, ITEM_TOPICS, lakehouse.read_table(spark, source, ITEM_TOPICS))
                break
        EmbedItemsJob(spark, sconf).run()
        MigrationJob(spark, sconf).rebuild(cutoff)
        return sconf

    # ---- systems -----------------------------------------------------------------------------------------------
    def model_recs(self, sconf: Config, protocol: str, cutoff: dt.date, users: DataFrame, k: int,
                   timings: dict[str, float]) -> dict[str, DataFrame]:
        from jobs.topk import TopKJob  # lazily: torch
        from jobs.train import TrainJob

        spark, out = self.spark, {}
        epochs = self.ev.epochs or self.conf.training.epochs
        for init in ("text", "random"):
            t0 = time.perf_counter()
            tconf = _scratch_conf(sconf, Path(sconf.lakehouse.root), protocol,
                                  training={"use_text": init == "text", "model_name": f"eval_{init}",
                                            "epochs": epochs, "warm_start": False})
            TrainJob(spark, tconf).run(cutoff)
            timings[f"train_{init}"] = round(time.perf_counter() - t0, 1)
        for system, (init, blend) in MODEL_SYSTEMS.items():
            t0 = time.perf_counter()
            kconf = _scratch_conf(
                sconf, Path(sconf.lakehouse.root), protocol,
                training={"model_name": f"eval_{init}"},
                topk={"all_users": True, "k": k, "model_version": None,
                      "blend_weight": self.conf.topk.blend_weight if blend is None else blend},
            )
            rows, _, _ = TopKJob(spark, kconf).recommendations(cutoff + dt.timedelta(days=1))
            out[system] = (
                rows.join(users, "user_id", "left_semi").select("user_id", "rank", "item_id", "score")
                .localCheckpoint(eager=True)
            )
            timings[system] = round(time.perf_counter() - t0, 1)
        return out

    def baseline_recs(self, train: DataFrame, cutoff: dt.date, users: DataFrame, k: int,
                      timings: dict[str, float]) -> dict[str, DataFrame]:
        ev, out = self.ev, {}
        since = cutoff - dt.timedelta(days=ev.recent_days - 1)
        for system, counted in (("popular_all_time", None),
                                ("popular_recent", train.where(F.col("event_date") >= F.lit(since)))):
            t0 = time.perf_counter()
            out[system] = baselines.most_popular(train, users, k, counted).localCheckpoint(eager=True)
            timings[system] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        out["als"] = baselines.als_recommendations(
            self.spark, train, users, k, rank=ev.als_rank, reg=ev.als_reg, alpha=ev.als_alpha,
            iterations=ev.als_iterations, seed=self.conf.training.seed,
        ).localCheckpoint(eager=True)
        timings["als"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        out["markov_item"] = baselines.markov_item_recommendations(train, users, k).localCheckpoint(eager=True)
        timings["markov_item"] = round(time.perf_counter() - t0, 1)
        return out

    # ---- the run -----------------------------------------------------------------------------------------------
    def run(self, *, with_models: bool = True, report: bool = True) -> EvaluationReport:
        spark, ev = self.spark, self.ev
        t_start = time.perf_counter()
        ks = tuple(sorted(set(ev.ks)))
        k = max(ks)
        events = lakehouse.read_table(spark, self.conf, EVENTS).cache()
        n_items = lakehouse.read_table(spark, self.conf, ITEMS).count()
        rows, results, previous = [], [], None
        for protocol in ev.protocols:
            split, cutoff = self.split(protocol, events)
            train = split.train.cache()
            truth = split.truth.cache()
            users = truth.select("user_id").distinct().cache()
            result = ProtocolResult(protocol, cutoff, users.count(), truth=truth)
            if result.truth_users == 0:
                raise ValueError(f"{protocol}: no user has events to predict after {cutoff}; move the cutoff")
            log.info("%s: built through %s, %d truth users", protocol, cutoff, result.truth_users)
            t0 = time.perf_counter()
            sconf = self.scratch(protocol, train, cutoff, previous)
            result.timings["scratch"] = round(time.perf_counter() - t0, 1)
            result.conf = previous = sconf
            result.recs.update(self.baseline_recs(train, cutoff, users, k, result.timings))
            if with_models:
                result.recs.update(self.model_recs(sconf, protocol, cutoff, users, k, result.timings))
            segments = latest_drift(spark, sconf).select("user_id", "segment")
            for system, recs in result.recs.items():
                summary = metrics.summarise(metrics.per_user(recs, truth, ks), segments).toPandas()
                summary["protocol"], summary["system"] = protocol, system
                rows.append(summary)
                cov = metrics.coverage(recs, n_items, ks)
                rows.append(pd.DataFrame([{"protocol": protocol, "system": system, "segment": "all", "k": kk,
                                           "metric": "coverage", "value": v, "users": n_items}
                                          for kk, v in cov.items()]))
            results.append(result)
            train.unpersist()
            users.unpersist()
        table = pd.concat(rows, ignore_index=True)[["protocol", "system", "segment", "k", "metric", "value", "users"]]
        table = table.sort_values(["protocol", "system", "segment", "k", "metric"]).reset_index(drop=True)
        self.write(table, {p.protocol: str(p.cutoff) for p in results})
        path = None
        if report:
            from driftrec.evaluation.report import render_report

            path = Path(ev.report or self.work / "report.html")
            path.write_text(render_report(spark, self.run_id, self.dataset, table, results))
            log.info("report: %s", path)
        for r in results:
            r.truth.unpersist()
        events.unpersist()
        return EvaluationReport(self.run_id, table, results, path, round(time.perf_counter() - t_start, 1))

    def write(self, table: pd.DataFrame, cutoffs: dict[str, str]) -> int:
        config = json.dumps({"evaluation": self.ev.model_dump(), "topk_blend_weight": self.conf.topk.blend_weight,
                             "training": self.conf.training.model_dump(), "cutoffs": cutoffs, "peers": list(PEERS)},
                            default=str)
        df = self.spark.createDataFrame(
            table.assign(k=table["k"].astype(int), users=table["users"].astype("int64")),
            "protocol string, system string, segment string, k int, metric string, value double, users long",
        ).select(
            F.lit(self.run_id).alias("run_id"), F.lit(self.dataset).alias("dataset"), "*",
            F.lit(config).alias("config_json"), F.current_timestamp().alias("created_at"),
        )
        # The run id is the user's text: the predicate renders it as a literal (an id "x' OR '1'='1" once
        # replaced every other run's rows).
        return lakehouse.replace_where(self.spark, self.conf, EVALUATION_RUNS, df,
                                       sqltext.equals("run_id", self.run_id))


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, help="name recorded with the results, e.g. ml-latest-small")
    parser.add_argument("--run-id", help="rows of this run id are replaced (default: dataset + timestamp)")


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Offline evaluation of every system under both protocols, with a report.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = build_spark(conf, app_name="driftrec-evaluate")
    report = EvaluationJob(spark, conf, args.dataset, args.run_id).run()
    print(report.table().round(4).to_string())
    print(report.versus_peers().round(4).to_string())
    print(f"run {report.run_id}: {report.seconds} s; report {report.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
