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
* ``pipeline``: the text-initialised model blended with the migration engine.

With ``evaluation.tune``, ``migration`` and ``pipeline`` use the settings ``driftrec tune`` would choose
(:mod:`driftrec.tuning`): a second scratch lakehouse per protocol holds its validation split, a text model is trained
there per seed, and the blend and the engine's scoring knobs that rank each user's validation event best are kept;
the test events are never looked at. Leave-one-out's split holds neither held-out event of a user (the validation
event is the second-to-last); the temporal one is what ``driftrec tune`` would have run on the night of the cutoff
(the training events, each user's latest held out), as a nightly job serves what its last tuning chose.

The peers, what users run today (:data:`driftrec.evaluation.report.PEERS`), are ``popular_*``, ``als``,
``markov_item`` and ``sasrec_random``; the report and the printed table show the best of them per protocol, segment,
metric and K, and each driftrec system's ratio to it (``config_json`` of every stored row lists the peers).

Metrics (HR, Recall, NDCG, MRR at each K, coverage) are written overall and for migrating / stable users (their
latest ``user_drift`` row as of the cutoff), per seed (``evaluation.seeds``: the seeded systems are trained again per
seed), with the run's configuration, replacing any earlier rows of the same ``run_id``. An HTML report with plots
(means over seeds) goes next to the scratch lakehouses; ``--export`` also writes the rows as CSV.

    driftrec ingest --movielens ../shared/data/ml-latest-small --lakehouse /tmp/ml
    driftrec evaluate --lakehouse /tmp/ml --dataset ml-latest-small --seeds 1,2,3 --export quality.csv
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, sqltext, tuning
from driftrec.config import Config
from driftrec.evaluation import baselines, metrics, protocols
from driftrec.evaluation.report import PEERS, peer_table, versus_best_peer
from driftrec.evaluation.views import latest_drift
from driftrec.jobargs import base_parser, config_from_args
from driftrec.spark import build_spark
from driftrec.tables import EVALUATION_RUNS, EVENTS, ITEMS
from jobs import scratch

log = logging.getLogger("driftrec.evaluate")

MODEL_SYSTEMS = {  # system -> (trained model, blend weight; None = topk.blend_weight)
    "migration": ("text", 1.0),
    "sasrec_random": ("random", 0.0),
    "sasrec_text": ("text", 0.0),
    "pipeline": ("text", None),
}


class Timings(dict):
    """Seconds per step; every step is logged as it ends, with the run's elapsed time (a run takes many minutes)."""

    def __init__(self, protocol: str, started: float):
        super().__init__()
        self.protocol, self.started = protocol, started

    def __setitem__(self, step: str, seconds: float) -> None:
        super().__setitem__(step, seconds)
        log.info("%s: %s done in %.1f s (%.0f s into the run)", self.protocol, step, seconds,
                 time.perf_counter() - self.started)


@dataclass
class ProtocolResult:
    protocol: str
    cutoff: dt.date
    truth_users: int
    recs: dict[str, DataFrame] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    conf: Config | None = None
    truth: DataFrame | None = None
    tuned: dict[int, tuning.TunedSettings] = field(default_factory=dict)  # per seed; empty: configured values


EXPORT_COLUMNS = ["protocol", "system", "segment", "seed", "metric", "k", "value"]


def mean_over_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, system, segment, k, metric): the mean over seeds."""
    keys = ["protocol", "system", "segment", "k", "metric"]
    return rows.groupby(keys, as_index=False).agg(value=("value", "mean"), users=("users", "first"))


@dataclass
class EvaluationReport:
    run_id: str
    rows: pd.DataFrame  # protocol, system, segment, seed, k, metric, value, users
    results: list[ProtocolResult]
    report_path: Path | None
    seconds: float

    @property
    def mean_rows(self) -> pd.DataFrame:
        return mean_over_seeds(self.rows)

    def table(self, k: int = 10) -> pd.DataFrame:
        """Systems x (protocol, metric) at cut-off ``k``, overall segment, mean over seeds."""
        rows = self.mean_rows
        sel = rows[(rows["segment"] == "all") & (rows["k"] == k)]
        return sel.pivot_table(index="system", columns=["protocol", "metric"], values="value")

    def spread(self, k: int = 10, metric: str = "ndcg") -> pd.DataFrame:
        """Systems x protocol at ``k``, overall segment: mean, standard deviation, min and max over seeds."""
        sel = self.rows[(self.rows["segment"] == "all") & (self.rows["k"] == k) & (self.rows["metric"] == metric)]
        return sel.pivot_table(index="system", columns="protocol", values="value",
                               aggfunc=["mean", "std", "min", "max"])

    def export(self, path: str | Path) -> Path:
        """The per-seed rows as CSV (:data:`EXPORT_COLUMNS`), e.g. ``benchmarks/results/quality-<dataset>.csv``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows[EXPORT_COLUMNS].sort_values(EXPORT_COLUMNS[:-1]).to_csv(path, index=False, float_format="%.6f")
        return path

    def versus_peers(self, k: int = 10, metrics: tuple[str, ...] = ("ndcg", "hr")) -> pd.DataFrame:
        """Per protocol and metric at ``k``, overall segment: the best peer, its value, each driftrec system's ratio
        (means over seeds)."""
        versus = versus_best_peer(self.mean_rows)
        versus = versus[(versus["segment"] == "all") & (versus["k"] == k) & versus["metric"].isin(metrics)]
        return peer_table(versus).droplevel(["segment", "k"])


class EvaluationJob:
    def __init__(self, spark: SparkSession, conf: Config, dataset: str, run_id: str | None = None):
        self.spark, self.conf, self.dataset = spark, conf, dataset
        self.ev = conf.evaluation
        self.run_id = run_id or f"{dataset}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        # Scratch lakehouses are cleared with shutil.rmtree and the report is written with open(): a local folder.
        work = self.ev.work_dir or lakehouse.Lakehouse.of(conf).evaluation_dir()
        self.work = lakehouse.Lakehouse(work).local_path(
            operation="evaluation's scratch lakehouses (set evaluation.work_dir to a local folder)")
        # ALS's iterations grow one RDD lineage; without checkpoints its tasks overflow the stack when deserialised
        # (seen with 15 iterations on ml-latest-small). With a checkpoint directory ALS cuts it every 10 iterations.
        if spark.sparkContext.getCheckpointDir() is None:
            spark.sparkContext.setCheckpointDir(lakehouse.join(work, "_checkpoints"))

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
        return scratch.build_scratch(self.spark, self.conf, self.work / protocol, protocol, train, cutoff,
                                     embedded_from)

    # ---- tuning ------------------------------------------------------------------------------------------------
    def tuning_split(self, protocol: str, events: DataFrame, train: DataFrame,
                     sconf: Config) -> tuple[Config, dt.date, DataFrame] | None:
        """The protocol's validation split in its own scratch lakehouse: ``(config, cutoff, truth)``, or None when no
        user has the three events it needs (:func:`driftrec.evaluation.protocols.tuning_split`)."""
        split = protocols.tuning_split(protocol, events, train)
        if split.truth.limit(1).count() == 0:
            log.warning("%s: no user has the three events a validation split needs; configured values used", protocol)
            return None
        vtrain = split.train.cache()
        cutoff = vtrain.agg(F.max("event_date")).first()[0]
        name = f"tune_{protocol}"
        vconf = scratch.build_scratch(self.spark, self.conf, self.work / name, name, vtrain, cutoff, sconf)
        vtrain.unpersist()
        return vconf, cutoff, split.truth.cache()

    def tuned(self, vconf: Config, cutoff: dt.date, truth: DataFrame, seed: int, timings: dict[str, float],
              tag: str = "") -> tuning.TunedSettings:
        """The settings the validation split chooses, with a text model trained there under ``seed``."""
        from jobs.tune import TuneJob  # lazily: torch

        epochs = self.ev.epochs or self.conf.training.epochs
        timings[f"tune_train{tag}"] = scratch.train_model(self.spark, vconf, "eval_tune", cutoff, use_text=True,
                                                          epochs=epochs, seed=seed)
        t0 = time.perf_counter()
        found = TuneJob(self.spark, self.conf, f"{self.run_id}-seed{seed}").search(vconf, cutoff, truth, "eval_tune")
        timings[f"tune_search{tag}"] = round(time.perf_counter() - t0, 1)
        return found

    # ---- systems -----------------------------------------------------------------------------------------------
    def model_recs(self, sconf: Config, protocol: str, cutoff: dt.date, users: DataFrame, k: int,
                   timings: dict[str, float], seed: int, tag: str = "",
                   tuned: tuning.TunedSettings | None = None) -> dict[str, DataFrame]:
        """The model systems' lists; with ``tuned``, ``migration`` and ``pipeline`` use the chosen settings."""
        from jobs.topk import TopKJob  # lazily: torch

        spark, out = self.spark, {}
        epochs = self.ev.epochs or self.conf.training.epochs
        for init in ("text", "random"):
            timings[f"train_{init}{tag}"] = scratch.train_model(spark, sconf, f"eval_{init}", cutoff,
                                                                use_text=init == "text", epochs=epochs, seed=seed)
        for system, (init, blend) in MODEL_SYSTEMS.items():
            t0 = time.perf_counter()
            kconf = scratch.with_sections(
                sconf, training={"model_name": f"eval_{init}"},
                topk={"all_users": True, "k": k, "model_version": None, "use_tuned": False,
                      "blend_weight": self.conf.topk.blend_weight if blend is None else blend},
            )
            if tuned is not None and system == "pipeline":
                kconf = tuning.with_settings(kconf, tuned.settings)
            elif tuned is not None and system == "migration":  # the chosen engine, alone
                kconf = tuning.with_settings(kconf, {"migration": tuned.settings["migration"]})
            rows, _, _ = TopKJob(spark, kconf, state_through=cutoff).recommendations(cutoff + dt.timedelta(days=1))
            out[system] = (
                rows.join(users, "user_id", "left_semi").select("user_id", "rank", "item_id", "score")
                .localCheckpoint(eager=True)
            )
            timings[f"{system}{tag}"] = round(time.perf_counter() - t0, 1)
        return out

    def baseline_recs(self, train: DataFrame, cutoff: dt.date, users: DataFrame, k: int,
                      timings: dict[str, float]) -> dict[str, DataFrame]:
        """The deterministic baselines: the same lists under every seed."""
        ev, out = self.ev, {}
        since = cutoff - dt.timedelta(days=ev.recent_days - 1)
        for system, counted in (("popular_all_time", None),
                                ("popular_recent", train.where(F.col("event_date") >= F.lit(since)))):
            t0 = time.perf_counter()
            out[system] = baselines.most_popular(train, users, k, counted).localCheckpoint(eager=True)
            timings[system] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        out["markov_item"] = baselines.markov_item_recommendations(train, users, k).localCheckpoint(eager=True)
        timings["markov_item"] = round(time.perf_counter() - t0, 1)
        return out

    def als_recs(self, train: DataFrame, users: DataFrame, k: int, timings: dict[str, float], seed: int,
                 tag: str = "") -> DataFrame:
        ev, t0 = self.ev, time.perf_counter()
        out = baselines.als_recommendations(
            self.spark, train, users, k, rank=ev.als_rank, reg=ev.als_reg, alpha=ev.als_alpha,
            iterations=ev.als_iterations, seed=seed,
        ).localCheckpoint(eager=True)
        timings[f"als{tag}"] = round(time.perf_counter() - t0, 1)
        return out

    def scored(self, protocol: str, seed: int, recs: dict[str, DataFrame], truth: DataFrame, segments: DataFrame,
               ks: tuple[int, ...], n_items: int) -> list[pd.DataFrame]:
        """Metric rows of each system's lists: per segment, plus catalogue coverage."""
        rows = []
        for system, lists in recs.items():
            summary = metrics.summarise(metrics.per_user(lists, truth, ks), segments).toPandas()
            summary["protocol"], summary["system"], summary["seed"] = protocol, system, seed
            rows.append(summary)
            cov = metrics.coverage(lists, n_items, ks)
            rows.append(pd.DataFrame([{"protocol": protocol, "system": system, "segment": "all", "seed": seed,
                                       "k": kk, "metric": "coverage", "value": v, "users": n_items}
                                      for kk, v in cov.items()]))
        return rows

    # ---- the run -----------------------------------------------------------------------------------------------
    def run(self, *, with_models: bool = True, report: bool = True) -> EvaluationReport:
        spark, ev = self.spark, self.ev
        t_start = time.perf_counter()
        ks = tuple(sorted(set(ev.ks)))
        k = max(ks)
        events = lakehouse.read_table(spark, self.conf, EVENTS).cache()
        n_items = lakehouse.read_table(spark, self.conf, ITEMS).count()
        seeds = list(dict.fromkeys(ev.seeds)) or [self.conf.training.seed]
        rows, results, previous = [], [], None
        for protocol in ev.protocols:
            split, cutoff = self.split(protocol, events)
            train = split.train.cache()
            truth = split.truth.cache()
            users = truth.select("user_id").distinct().cache()
            result = ProtocolResult(protocol, cutoff, users.count(), truth=truth,
                                    timings=Timings(protocol, t_start))
            if result.truth_users == 0:  # e.g. a cutoff after every user's last day: the other protocols still run
                log.warning("%s: no user has an event to predict after %s; skipped (set evaluation.cutoff or "
                            "evaluation.cutoff_quantile)", protocol, cutoff)
                for frame in (train, truth, users):
                    frame.unpersist()
                continue
            log.info("%s: built through %s, %d truth users", protocol, cutoff, result.truth_users)
            t0 = time.perf_counter()
            sconf = self.scratch(protocol, train, cutoff, previous)
            result.timings["scratch"] = round(time.perf_counter() - t0, 1)
            result.conf = previous = sconf
            segments = latest_drift(spark, sconf).select("user_id", "segment").cache()
            fixed = self.baseline_recs(train, cutoff, users, k, result.timings)
            result.recs.update(fixed)
            fixed_rows = self.scored(protocol, seeds[0], fixed, truth, segments, ks, n_items)
            validation = None
            if with_models and ev.tune:
                t0 = time.perf_counter()
                validation = self.tuning_split(protocol, events, train, sconf)
                result.timings["tune_scratch"] = round(time.perf_counter() - t0, 1)
            for i, seed in enumerate(seeds):
                tag = f"@{seed}" if len(seeds) > 1 else ""
                seeded = {"als": self.als_recs(train, users, k, result.timings, seed, tag)}
                if with_models:
                    if validation is not None:
                        result.tuned[seed] = self.tuned(*validation, seed, result.timings, tag)
                        log.info("%s seed %d: tuned %s", protocol, seed, result.tuned[seed].flat())
                    seeded.update(self.model_recs(sconf, protocol, cutoff, users, k, result.timings, seed, tag,
                                                  result.tuned.get(seed)))
                rows += [r.assign(seed=seed) for r in fixed_rows]
                rows += self.scored(protocol, seed, seeded, truth, segments, ks, n_items)
                if i == 0:  # the report's lists (rising-category shares): the first seed's
                    result.recs.update(seeded)
                else:
                    for lists in seeded.values():
                        lists.unpersist()
            segments.unpersist()
            if validation is not None:
                validation[2].unpersist()
            results.append(result)
            train.unpersist()
            users.unpersist()
        if not results:
            events.unpersist()
            raise ValueError(f"no user to judge under {', '.join(ev.protocols)}: every protocol was skipped (above)")
        columns = ["protocol", "system", "segment", "seed", "k", "metric", "value", "users"]
        table = pd.concat(rows, ignore_index=True)[columns]
        table = table.sort_values(columns[:6]).reset_index(drop=True)
        self.write(table, {p.protocol: str(p.cutoff) for p in results}, tuned_json(results))
        path = None
        if report:
            from driftrec.evaluation.report import render_report

            path = Path(ev.report or self.work / "report.html")
            path.write_text(render_report(spark, self.run_id, self.dataset, mean_over_seeds(table), results))
            log.info("report: %s", path)
        for r in results:
            r.truth.unpersist()
        events.unpersist()
        return EvaluationReport(self.run_id, table, results, path, round(time.perf_counter() - t_start, 1))

    def write(self, table: pd.DataFrame, cutoffs: dict[str, str], tuned: dict | None = None) -> int:
        config = json.dumps({"evaluation": self.ev.model_dump(), "topk": self.conf.topk.model_dump(),
                             "migration": self.conf.migration.model_dump(), "tuning": self.conf.tuning.model_dump(),
                             "training": self.conf.training.model_dump(), "cutoffs": cutoffs, "peers": list(PEERS),
                             "tuned": tuned or {}},
                            default=str)
        df = self.spark.createDataFrame(
            table.assign(k=table["k"].astype(int), seed=table["seed"].astype(int), users=table["users"].astype("int64")),
            "protocol string, system string, segment string, seed int, k int, metric string, value double, users long",
        ).select(
            F.lit(self.run_id).alias("run_id"), F.lit(self.dataset).alias("dataset"), "*",
            F.lit(config).alias("config_json"), F.current_timestamp().alias("created_at"),
        )
        # The run id is the user's text: the predicate renders it as a literal (an id "x' OR '1'='1" once
        # replaced every other run's rows).
        return lakehouse.replace_where(self.spark, self.conf, EVALUATION_RUNS, df,
                                       sqltext.equals("run_id", self.run_id))


def tuned_json(results: list[ProtocolResult]) -> dict:
    """``{protocol: {seed: {settings, validation_ndcg, default_ndcg, users, migrating_users}}}`` of the protocols
    that tuned."""
    return {r.protocol: {str(seed): {"settings": t.settings, "validation_ndcg": t.validation_ndcg,
                                     "default_ndcg": t.default_ndcg, "users": t.users,
                                     "migrating_users": migrating_users(t)}
                         for seed, t in r.tuned.items()} for r in results if r.tuned}


def migrating_users(tuned: tuning.TunedSettings) -> int | None:
    """How many of the validation users the drift flag calls migrating (their own blend weight needs enough)."""
    return next((row["users_migrating"] for row in tuned.search if "users_migrating" in row), None)


def tuned_table(results: list[ProtocolResult]) -> pd.DataFrame:
    """One row per (protocol, seed): the chosen values and their validation NDCG against the configured values'."""
    rows = [{"protocol": r.protocol, "seed": seed, **t.flat(), "validation_ndcg": round(t.validation_ndcg, 4),
             "configured_ndcg": round(t.default_ndcg, 4), "users": t.users, "migrating_users": migrating_users(t)}
            for r in results for seed, t in r.tuned.items()]
    return pd.DataFrame(rows)


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, help="name recorded with the results, e.g. ml-latest-small")
    parser.add_argument("--run-id", help="rows of this run id are replaced (default: dataset + timestamp)")
    parser.add_argument("--seeds", help="comma-separated seeds of the seeded systems, e.g. 1,2,3 "
                        "(shortcut for --set evaluation.seeds=[...]; default: training.seed)")
    parser.add_argument("--export", metavar="CSV", help="also write the run's rows to this local CSV file "
                        "(columns: " + ", ".join(EXPORT_COLUMNS) + "), e.g. benchmarks/results/quality-<dataset>.csv")


def config_from_arguments(parser, args) -> Config:
    """The configuration, with ``--seeds`` folded into ``evaluation.seeds``."""
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--seeds: not a comma-separated list of integers: {args.seeds!r}")
        args.overrides.append(f"evaluation.seeds={seeds}")
    return config_from_args(args)


def run_from_args(spark: SparkSession, conf: Config, args) -> int:
    report = EvaluationJob(spark, conf, args.dataset, args.run_id).run()
    print(report.table().round(4).to_string())
    print(report.versus_peers().round(4).to_string())
    chosen = tuned_table(report.results)
    if len(chosen):
        print("settings chosen on each protocol's validation split (never on its test events):")
        print(chosen.to_string(index=False))
    if len(set(report.rows["seed"])) > 1:
        print(report.spread().round(4).to_string())
    if args.export:
        print(f"rows: {report.export(args.export)}")
    print(f"run {report.run_id}: {report.seconds} s; report {report.report_path}")
    return 0


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Offline evaluation of every system under both protocols, with a report.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_arguments(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(build_spark(conf, app_name="driftrec-evaluate"), conf, args)


if __name__ == "__main__":
    sys.exit(entrypoint())
