"""Nightly top-k job: every active user scored against the catalogue, model blended with migration -> ``recommendations``.

For date D: the serving model (current registry version, or ``topk.model_version``) is loaded, checked and grown to
tonight's catalogue before anything else, so a bad version fails the job with nothing written. Users active in the
last ``topk.lookback_days`` (or all users) are assembled with their recent items, consumed items, interest state and
predicted next-step interest ``q_u`` (Spark); ``spark_udfs.topk`` scores them in batches inside ``mapInPandas``;
the rows get a human-readable reason and replace partition ``ds = D`` of ``recommendations`` in one commit.

Under spark-submit::

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/topk.py --date 2026-01-31
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse, sqltext
from driftrec.config import Config
from driftrec.jobargs import add_run_id, base_parser, config_from_args, parse_date
from driftrec.migration import transitions as tr
from driftrec.migration.scoring import (
    MarkovState,
    load_markov_state,
    predicted_interest,
    reason_text,
)
from driftrec.serving import ServingModel, load_serving_model
from driftrec.spark import build_spark
from driftrec.stage_runs import StageResult, run_recorded
from driftrec.tables import EVENTS, ITEMS, MIGRATION_RUNS, RECOMMENDATIONS, USER_DRIFT, USER_INTEREST

log = logging.getLogger("driftrec.topk")


@dataclass(frozen=True)
class TopKReport:
    ds: dt.date
    users: int
    rows: int
    model_version: int
    new_items: int
    catalogue: int
    tuned_run: str | None = None  # the tuned_settings row served, if any

    def summary(self) -> str:
        return (
            f"top-k {self.ds}: {self.rows} rows for {self.users} users, model v{self.model_version} "
            f"over {self.catalogue} items ({self.new_items} added since training)"
            + (f"; tuned settings {self.tuned_run}" if self.tuned_run else "")
        )


def user_histories(events: DataFrame, keep_last: int, with_consumed: bool) -> DataFrame:
    """``(user_id, item_ids, consumed)``: the last ``keep_last`` items oldest first; every item consumed (or null)."""
    ordered = F.array_sort(F.collect_list(F.struct(F.col("event_ts"), F.col("event_id"), F.col("item_id"))))
    hist = events.groupBy("user_id").agg(ordered.alias("evs"))
    items = F.transform("evs", lambda e: e["item_id"])
    return hist.select(
        "user_id",
        F.slice(items, F.greatest(F.size(items) - keep_last + 1, F.lit(1)), keep_last).alias("item_ids"),
        (F.array_sort(F.array_distinct(items)) if with_consumed else F.lit(None).cast("array<bigint>")).alias(
            "consumed"
        ),
    )


def latest_migrating(drift: DataFrame, ds: dt.date) -> DataFrame:
    """``(user_id, migrating)``: each user's flag in their latest ``user_drift`` row on or before ``ds``."""
    return drift.where(F.col("ds") <= F.lit(ds)).groupBy("user_id").agg(
        F.max_by("migrating", "ds").alias("migrating"))


def interest_arrays(q: DataFrame) -> DataFrame:
    """``predicted_interest`` rows -> one row per user: ``q`` and ``rise`` arrays in category-name order."""
    pairs = F.array_sort(F.collect_list(F.struct("category", "q", "rise")))
    return q.groupBy("user_id").agg(pairs.alias("qs")).select(
        "user_id",
        F.transform("qs", lambda x: x["q"]).alias("q"),
        F.transform("qs", lambda x: x["rise"]).alias("rise"),
    )


@dataclass
class Prepared:
    served: ServingModel
    assets: object  # spark_udfs.topk.ScoringAssets
    users: DataFrame  # user_id, item_ids, consumed, interest_categories, interest_p, q, rise
    n_users: int


def declared_interest(extra: DataFrame, categories: list[str]) -> DataFrame:
    """``(user_id, q_declared)``: uniform over the known categories a user declared (none known: no row)."""
    cats = F.coalesce(F.col("categories"), F.array().cast("array<string>"))
    hits = F.array(*[F.when(F.array_contains(cats, c), F.lit(1.0)).otherwise(F.lit(0.0)) for c in categories])
    total = F.aggregate(hits, F.lit(0.0), lambda acc, x: acc + x)
    return (
        extra.select("user_id", hits.alias("hits"), total.alias("total"))
        .where(F.col("total") > 0)
        .select("user_id", F.transform("hits", lambda x: x / F.col("total")).alias("q_declared"))
    )


def inferred_interest(events: DataFrame, item_cats: DataFrame, categories: list[str]) -> DataFrame:
    """``(user_id, q_inferred)``: the category shares of a user's items, normalised over ``categories`` (in order).

    For users with events the migration state has not absorbed yet (new since its last night): without it they would
    get everyone's interest; their own few items say more.
    """
    per = events.select("user_id", "item_id").join(item_cats.where(F.col("category").isin(categories)), "item_id")
    per = per.groupBy("user_id", "category").agg(F.sum("share").alias("s"))
    shares = per.groupBy("user_id").agg(F.map_from_entries(F.collect_list(F.struct("category", "s"))).alias("m"))
    raw = F.array(*[F.coalesce(F.col("m")[c], F.lit(0.0)) for c in categories])
    total = F.aggregate("raw", F.lit(0.0), lambda acc, x: acc + x)
    return (
        shares.select("user_id", raw.alias("raw"))
        .select("user_id", "raw", total.alias("total"))
        .where(F.col("total") > 0)
        .select("user_id", F.transform("raw", lambda x: x / F.col("total")).alias("q_inferred"))
    )


class TopKJob:
    def __init__(self, spark: SparkSession, conf: Config, *, state_through: dt.date | None = None):
        """``state_through``: the night the migration state is expected to be as of (default: the scoring date, as in
        the nightly, where an older state gets a warning); evaluation and tuning score the day after their cutoff from
        the state as of the cutoff, by design."""
        self.spark, self.configured, self.conf = spark, conf, conf
        self.tuned = None
        self.state_through = state_through

    def _serve_tuned(self, ds: dt.date) -> None:
        """Apply the latest `driftrec tune` choice made on data through ``ds`` at most (``topk.use_tuned``): a rerun
        of a past night serves what that night could have served, not a later choice."""
        from driftrec import tuning

        conf = self.configured
        self.tuned = tuning.latest(self.spark, conf, through=ds) if conf.topk.use_tuned else None
        self.conf = tuning.with_settings(conf, self.tuned.settings) if self.tuned else conf
        if self.tuned:
            log.info("serving tuned settings of run %s (data through %s): %s", self.tuned.run_id,
                     self.tuned.data_through, self.tuned.settings)

    def _events(self, ds: dt.date) -> DataFrame:
        if not lakehouse.table_exists(self.spark, self.conf, EVENTS):
            raise RuntimeError("no events table: run the ingest job first")
        return lakehouse.read_table(self.spark, self.conf, EVENTS).where(F.col("event_date") <= F.lit(ds))

    def _migration_state(self, ds: dt.date) -> MarkovState:
        spark, conf = self.spark, self.conf
        if not lakehouse.table_exists(spark, conf, USER_INTEREST):
            raise RuntimeError("no migration state (user_interest): run the migration job first")
        if lakehouse.table_exists(spark, conf, MIGRATION_RUNS):
            last = (
                lakehouse.read_table(spark, conf, MIGRATION_RUNS)
                .where((F.col("status") == "finished") & (F.col("ds") <= F.lit(ds)))
                .agg(F.max("ds"))
                .first()[0]
            )
            expected = self.state_through or ds
            if last is None or last < expected:
                log.warning("migration state is as of %s, not %s: run the migration job for %s first for fresh "
                            "interest and successors", last, expected, expected)
        return load_markov_state(spark, conf, ds)

    def assets(self, served: ServingModel, state: MarkovState):
        """The scorer's broadcast inputs: :func:`spark_udfs.assets.build_assets`."""
        from spark_udfs.assets import build_assets

        return build_assets(served, state, self.conf)

    def _extra_users(self) -> DataFrame | None:
        t = self.conf.topk
        if not t.extra_users:
            return None
        extra = lakehouse.read_location(self.spark, t.extra_users)
        tr.require_columns(extra, ("user_id",), f"topk.extra_users {t.extra_users}")
        if "categories" not in extra.columns:
            extra = extra.withColumn("categories", F.lit(None).cast("array<string>"))
        return extra.select(F.col("user_id").cast("bigint"), "categories")

    def users_frame(self, events: DataFrame, ds: dt.date, state: MarkovState, keep_last: int,
                    categories: list[str]) -> DataFrame:
        """One row per scored user with everything the scorer reads; ``categories`` orders the q / rise arrays."""
        from driftrec.training_data import user_interest_arrays

        t = self.conf.topk
        if t.all_users:
            users = events.select("user_id").distinct()
        else:
            since = ds - dt.timedelta(days=t.lookback_days - 1)
            users = events.where(F.col("event_date") >= F.lit(since)).select("user_id").distinct()
        extra = self._extra_users()
        if extra is not None:
            users = users.unionByName(extra.select("user_id")).distinct()
        hist = user_histories(events.join(users, "user_id", "left_semi"), keep_last, t.exclude_consumed)
        interest = lakehouse.read_table(self.spark, self.conf, USER_INTEREST)
        arrays = user_interest_arrays(interest, ds).drop("interest_as_of")
        q = interest_arrays(predicted_interest(users, state, self.conf.migration))
        frame = users.join(hist, "user_id", "left").join(arrays, "user_id", "left").join(q, "user_id", "left")
        # Users with events the state has not seen yet: their interest is inferred from their items' categories.
        stateless = users.join(state.interest.select("user_id"), "user_id", "left_anti")
        frame = frame.join(inferred_interest(events.join(stateless, "user_id", "left_semi"), state.item_cats,
                                             categories), "user_id", "left")
        if extra is not None:
            # Cold start: a user with no history and declared categories predicts inside them, uniformly.
            frame = frame.join(declared_interest(extra, categories), "user_id", "left")
        else:
            frame = frame.withColumn("q_declared", F.lit(None).cast("array<double>"))
        q_final = (
            F.when(F.col("item_ids").isNull() & F.col("q_declared").isNotNull(), F.col("q_declared"))
            .when(F.col("q_inferred").isNotNull(), F.col("q_inferred"))
            .otherwise(F.col("q"))
        )
        frame = frame.withColumn("q", q_final)
        if t.blend_weight_migrating is not None:  # the gate reads each user's latest drift flag
            frame = frame.join(latest_migrating(lakehouse.read_table(self.spark, self.conf, USER_DRIFT), ds),
                               "user_id", "left")
        else:
            frame = frame.withColumn("migrating", F.lit(None).cast("boolean"))
        return frame.select("user_id", "item_ids", "consumed", "interest_categories", "interest_p", "q", "rise",
                            "migrating")

    def prepare(self, ds: dt.date) -> Prepared:
        """Model (checked first), broadcastable assets and the per-user input rows (materialised)."""
        self._serve_tuned(ds)
        spark, conf, t = self.spark, self.conf, self.conf.topk
        events = self._events(ds)
        served = load_serving_model(spark, conf, events.select("item_id").distinct(), t.model_version)
        state = self._migration_state(ds)
        assets = self.assets(served, state)
        keep_last = max(int(served.model.p.max_seq_len), conf.migration.recent_items)
        users = self.users_frame(events, ds, state, keep_last, assets.markov_categories)
        users = users.localCheckpoint(eager=True)
        return Prepared(served, assets, users, users.count())

    def recommendations(self, ds: dt.date) -> tuple[DataFrame, ServingModel, int]:
        """The night's rows (not written): ``(recommendations rows, serving model, users scored)``."""
        from spark_udfs.topk import OUTPUT_SCHEMA, topk_udf

        prep = self.prepare(ds)  # applies the tuned settings: read the configuration after it
        spark, conf, t = self.spark, self.conf, self.conf.topk
        served = prep.served
        parts = t.partitions or spark.sparkContext.defaultParallelism
        scored = (
            prep.users.repartition(parts, "user_id")
            .sortWithinPartitions("user_id")
            .mapInPandas(topk_udf(spark.sparkContext.broadcast(prep.assets), t.users_per_batch), OUTPUT_SCHEMA)
        )
        titles = lakehouse.read_table(spark, conf, ITEMS).select(
            F.col("item_id").alias("via_item"), F.col("title").alias("via_title")
        )
        rows = scored.join(F.broadcast(titles), "via_item", "left").select(
            F.lit(ds).cast("date").alias("ds"),
            "user_id",
            "rank",
            "item_id",
            "score",
            F.lit(served.version).cast("bigint").alias("model_version"),
            reason_text(F.col("reason_kind"), F.col("via_item"), F.col("via_title"), F.col("via_category"))
            .alias("reason"),
        )
        return rows, served, prep.n_users

    def run(self, ds: dt.date) -> TopKReport:
        rows, served, n_users = self.recommendations(ds)
        written = lakehouse.replace_where(self.spark, self.conf, RECOMMENDATIONS, rows, sqltext.equals("ds", ds))
        report = TopKReport(ds, n_users, written, served.version, served.new_items, served.space.n_items,
                            self.tuned.run_id if self.tuned else None)
        log.info(report.summary())
        return report


def add_arguments(parser) -> None:
    parser.add_argument("--date", type=parse_date, required=True, help="the night to score (YYYY-MM-DD)")
    add_run_id(parser)


def run_stage(spark: SparkSession, conf: Config, ds: dt.date) -> StageResult:
    """The nightly ``topk`` stage and what it read (users scored) and wrote (rows)."""
    rep = TopKJob(spark, conf).run(ds)
    return StageResult(rows_in=rep.users, rows_out=rep.rows, model_version=rep.model_version, detail=rep.summary())


def run_from_args(spark: SparkSession, conf: Config, args) -> StageResult:
    """The stage, recorded in ``pipeline_runs`` like a nightly run records it."""
    return run_recorded(spark, conf, args.date, "topk", lambda: run_stage(spark, conf, args.date), args.run_id)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    parser = base_parser("Nightly top-k: score active users, blend with migration, write recommendations.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = build_spark(conf, app_name="driftrec-topk")
    print(run_from_args(spark, conf, args).detail)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
