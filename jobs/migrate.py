"""Nightly interest-migration job: ``events`` of one date + stored state -> transitions, interest, drift.

One night D reads only D's ``events`` partition and the state tables (pinned at their versions before the
night), and MERGEs what changed; ``user_drift`` gets its ``ds = D`` partition replaced. ``migration_runs`` is the
watermark: it records, for each processed night, the versions of every migration table before that night, so
rerunning the latest night first restores those versions and gives exactly the same tables, and a backfill that
starts before the watermark rewinds to its first date. Needs those versions not vacuumed away.

Under spark-submit::

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/migrate.py --date 2026-01-31
    spark-submit ... jobs/migrate.py --from 2026-01-01 --to 2026-01-31
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.categories import item_categories
from driftrec.config import Config
from driftrec.jobargs import base_parser, config_from_args, parse_date
from driftrec.migration import drift, fit, interest
from driftrec.migration import transitions as tr
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    EVENTS,
    ITEM_POPULARITY,
    ITEM_TRANSITION_COUNTS,
    ITEM_TRANSITIONS,
    MIGRATION_RUNS,
    MIGRATION_TABLES,
    USER_DRIFT,
    USER_INTEREST,
    USER_LAST_EVENT,
    USER_TRANSITIONS,
    TableSpec,
)

log = logging.getLogger("driftrec.migrate")

# Tables a rerun or rewind restores; migration_runs itself is among them, so the watermark rewinds too.
VERSIONED = MIGRATION_TABLES


@dataclass(frozen=True)
class NightReport:
    ds: dt.date
    n_events: int
    n_users: int
    a: float
    b: float
    method: str
    log_likelihood: float | None

    def summary(self) -> str:
        ll = "n/a" if self.log_likelihood is None else f"{self.log_likelihood:.2f}"
        return (
            f"migrate {self.ds}: {self.n_events} events, {self.n_users} users moved, "
            f"a={self.a:.3f} b={self.b:.3f} ({self.method}, log-likelihood {ll})"
        )


def _materialise(df: DataFrame) -> DataFrame:
    """Compute once and cut the lineage: a night chains many transforms, and re-planning them is the real cost."""
    return df.localCheckpoint(eager=True)


class MigrationJob:
    def __init__(self, spark: SparkSession, conf: Config):
        self.spark = spark
        self.conf = conf
        self.m = conf.migration
        self._ready = False  # migration tables ensured (once per job, not per night)
        if (self.m.pin_a is None) != (self.m.pin_b is None):
            raise ValueError("migration.pin_a and migration.pin_b must be set together")
        for a, b, what in ((self.m.pin_a, self.m.pin_b, "pin"), (self.m.default_a, self.m.default_b, "default")):
            if a is not None and a + b > 1.0 + 1e-12:
                raise ValueError(f"migration.{what}_a + migration.{what}_b must be <= 1, got {a + b}")

    # ---- watermark -------------------------------------------------------------------------------------------
    def processed_dates(self) -> list[dt.date]:
        if not lakehouse.table_exists(self.spark, self.conf, MIGRATION_RUNS):
            return []
        rows = lakehouse.read_table(self.spark, self.conf, MIGRATION_RUNS).select("ds").orderBy("ds").collect()
        return [r["ds"] for r in rows]

    def _rewind_to(self, day: dt.date) -> None:
        """Restore every migration table to its version before the first processed night >= ``day``."""
        runs = lakehouse.read_table(self.spark, self.conf, MIGRATION_RUNS)
        row = runs.where(F.col("ds") >= tr.date_lit(day)).orderBy("ds").select("ds", "state_versions").first()
        if row is None:
            return
        log.info("rewinding migration tables to before %s", row["ds"])
        for spec in VERSIONED:
            version = row["state_versions"].get(spec.logical)
            if version is not None:
                lakehouse.restore_version(self.spark, self.conf, spec, int(version))

    def run(self, day: dt.date) -> NightReport:
        """Process night ``day``; a rerun of the latest night replaces it exactly."""
        done = self.processed_dates()
        if done and day < done[-1]:
            raise ValueError(
                f"{day} is before the migration watermark {done[-1]}: rerun with backfill({day}, {done[-1]}) "
                "so the later nights are recomputed on top of it"
            )
        if done and day == done[-1]:
            self._rewind_to(day)
        return self._night(day)

    def backfill(self, start: dt.date, end: dt.date) -> list[NightReport]:
        """Every night from ``start`` to ``end`` inclusive, in order (empty days included: decay advances)."""
        if end < start:
            raise ValueError(f"backfill range is empty: {start} > {end}")
        done = self.processed_dates()
        if done and start <= done[-1]:
            self._rewind_to(start)
        reports = []
        day = start
        while day <= end:
            reports.append(self._night(day))
            day += dt.timedelta(days=1)
        return reports

    # ---- one night -------------------------------------------------------------------------------------------
    def _night(self, day: dt.date) -> NightReport:
        spark, conf, m = self.spark, self.conf, self.m
        if not self._ready:
            lakehouse.ensure_tables(spark, conf, MIGRATION_TABLES)
            self._ready = True
        versions = {spec.logical: lakehouse.table_version(spark, conf, spec) for spec in VERSIONED}

        def before(spec: TableSpec) -> DataFrame:
            return lakehouse.read_table_at(spark, conf, spec, versions[spec.logical])

        events = _materialise(self._events(day))
        n_events = events.count()
        item_cats = _materialise(item_categories(spark, conf))
        active = events.select("user_id").distinct()

        carried = before(USER_LAST_EVENT).join(active, "user_id", "left_semi")
        pairs = _materialise(tr.transition_pairs(events, carried, m.gap_minutes))

        # Global category matrix: before the night (the prior's P_g and g) and after it (published).
        old_global = before(CATEGORY_TRANSITIONS).withColumnRenamed("updated_through", "as_of")
        categories = _materialise(
            item_cats.select("category").unionByName(old_global.select(F.col("from_cat").alias("category"))).distinct()
        )
        cat_pairs = _materialise(tr.category_pairs(pairs, item_cats))
        keys_g = ["from_cat", "to_cat"]
        pre_global = _materialise(tr.global_category_matrix(
            tr.decay_merge(old_global, cat_pairs.limit(0).select(*keys_g, "n"), keys_g, day, m.half_life_days),
            categories,
            m.category_smoothing,
        ))
        post_global = _materialise(tr.global_category_matrix(
            tr.decay_merge(old_global, cat_pairs.select(*keys_g, "n"), keys_g, day, m.half_life_days),
            categories,
            m.category_smoothing,
        ))
        popularity = _materialise(tr.category_popularity(pre_global, m.category_smoothing))

        # Interest: the state before the night predicts the night's evidence (the fit), then absorbs it.
        evidence = tr.category_evidence(events, item_cats)
        movers = evidence.select("user_id").distinct()
        keys_u = ["user_id", "from_cat", "to_cat"]
        old_user = before(USER_TRANSITIONS).withColumnRenamed("updated_through", "as_of")
        mover_counts = old_user.join(movers, "user_id", "left_semi").select(
            *keys_u, tr.decayed(F.col("count"), F.col("as_of"), day, m.half_life_days).alias("count")
        )
        previous = (
            before(USER_INTEREST)
            .join(movers, "user_id", "left_semi")
            .select(
                "user_id",
                "category",
                "p",
                tr.decayed(F.col("recent_count"), F.col("as_of"), day, m.recent_half_life_days).alias("rt_prev"),
                tr.decayed(F.col("long_term_count"), F.col("as_of"), day, m.baseline_half_life_days).alias("lt_prev"),
            )
        )
        frame = _materialise(interest.night_frame(
            movers, categories, previous, evidence, popularity, mover_counts, pre_global, m.shrinkage_strength
        ))
        a, b, method, ll, ll_default, n_fit, n_users = self._drift_params(frame, day)
        moved = _materialise(
            interest.updated_interest(frame, a, b, m.prior_strength)
            .withColumn("rt_new", F.col("rt_prev") + F.col("n"))
            .withColumn("lt_new", F.col("lt_prev") + F.col("n"))
        )

        # ---- writes (inputs above are pinned to the versions before the night) ----
        lakehouse.merge_upsert(
            spark, conf, CATEGORY_TRANSITIONS,
            post_global.withColumn("updated_through", tr.date_lit(day)), update_when="true",
        )
        user_delta = cat_pairs.select(*keys_u, "n")
        user_rows = tr.decay_merge(
            old_user.join(user_delta.select("user_id").distinct(), "user_id", "left_semi"),
            user_delta, keys_u, day, m.half_life_days,
        )
        lakehouse.merge_upsert(
            spark, conf, USER_TRANSITIONS,
            tr.shrunk_user_rows(user_rows, post_global, m.shrinkage_strength)
            .withColumn("updated_through", tr.date_lit(day)),
            update_when="true",
        )
        self._item_tables(day, events, pairs, before)
        lakehouse.merge_upsert(
            spark, conf, USER_INTEREST,
            moved.select("user_id", "category", F.col("p_new").alias("p"), F.col("rt_new").alias("recent_count"),
                         F.col("lt_new").alias("long_term_count"), tr.date_lit(day).alias("as_of")),
            update_when="true",
        )
        lakehouse.merge_upsert(spark, conf, USER_LAST_EVENT, tr.last_events(events), update_when="true")
        lakehouse.replace_where(
            spark, conf, USER_DRIFT,
            drift.user_drift(moved, m.drift_smoothing, m.drift_threshold).withColumn("ds", tr.date_lit(day)),
            f"ds = '{day.isoformat()}'",
        )
        now = F.current_timestamp()
        params = spark.createDataFrame(
            [(day, a, b, method, ll, ll_default, n_events, float(n_fit), n_users)],
            "ds date, a double, b double, method string, log_likelihood double, log_likelihood_default double, "
            "n_events long, n_fit_events double, n_users long",
        ).withColumn("finished_at", now)
        lakehouse.merge_upsert(spark, conf, DRIFT_PARAMS, params, update_when="true")
        run_row = spark.createDataFrame(
            [(day, versions)], "ds date, state_versions map<string, bigint>"
        ).withColumn("finished_at", now)
        lakehouse.merge_upsert(spark, conf, MIGRATION_RUNS, run_row, update_when="true")

        report = NightReport(day, n_events, n_users, a, b, method, ll)
        log.info(report.summary())
        return report

    def _events(self, day: dt.date) -> DataFrame:
        if not lakehouse.table_exists(self.spark, self.conf, EVENTS):
            return self.spark.createDataFrame([], "user_id bigint, item_id bigint, event_ts timestamp, event_id string")
        return (
            lakehouse.read_table(self.spark, self.conf, EVENTS)
            .where(F.col("event_date") == tr.date_lit(day))
            .select(*tr.EVENT_COLS)
        )

    def _drift_params(self, frame: DataFrame, day: dt.date):
        """``(a, b, method, loglik, loglik_at_default, n_fit, n_users)``: pinned, fitted, or carried from the last fit.

        The held-out cells are those of users with a stored interest: the night's events they had not shown yet.
        """
        m = self.m
        held = F.col("has_prev") & (F.col("n") > 0)
        q_default = F.greatest(interest.prior_column(m.default_a, m.default_b), F.lit(fit.LOG_FLOOR))
        stats = frame.agg(
            F.countDistinct("user_id").alias("users"),
            F.sum(F.when(held, F.col("n"))).alias("n_fit"),
            F.sum(F.when(held, F.col("n") * F.log(q_default))).alias("ll_default"),
        ).first()
        n_users, n_fit, ll_default = int(stats["users"]), float(stats["n_fit"] or 0.0), stats["ll_default"]
        held_out = frame.where(F.col("has_prev"))
        if m.pin_a is not None:
            ll = fit.log_likelihood_at(held_out, m.pin_a, m.pin_b) if n_fit else None
            return m.pin_a, m.pin_b, "pinned", ll, ll_default, n_fit, n_users
        if n_fit >= m.min_fit_events:
            result = fit.fit_drift(self.spark, held_out, m.fit_grid_step, total=n_fit)
            if result is not None:
                return result.a, result.b, "fitted", result.log_likelihood, ll_default, n_fit, n_users
        last = (
            lakehouse.read_table(self.spark, self.conf, DRIFT_PARAMS)
            .where((F.col("method") == "fitted") & (F.col("ds") < tr.date_lit(day)))
            .orderBy(F.col("ds").desc())
            .select("a", "b")
            .first()
        )
        if last is None:
            return m.default_a, m.default_b, "default", ll_default, ll_default, n_fit, n_users
        ll = fit.log_likelihood_at(held_out, last["a"], last["b"]) if n_fit else None
        return last["a"], last["b"], "carried", ll, ll_default, n_fit, n_users

    def _item_tables(self, day: dt.date, events: DataFrame, pairs: DataFrame, before) -> None:
        """Item pair counts and popularity (state), then the pruned successor lists of the items that moved."""
        spark, conf, m = self.spark, self.conf, self.m
        keys_i = ["from_item", "to_item"]
        delta = tr.item_pairs(pairs).groupBy(*keys_i).agg(F.sum("n").alias("n"))
        old = before(ITEM_TRANSITION_COUNTS).join(delta.select(*keys_i), keys_i, "left_semi")
        lakehouse.merge_upsert(
            spark, conf, ITEM_TRANSITION_COUNTS,
            tr.decay_merge(old, delta, keys_i, day, m.half_life_days).withColumn("as_of", tr.date_lit(day)),
            update_when="true",
        )
        pop_delta = events.groupBy("item_id").agg(F.count(F.lit(1)).cast("double").alias("n"))
        old_pop = before(ITEM_POPULARITY).join(pop_delta.select("item_id"), "item_id", "left_semi")
        lakehouse.merge_upsert(
            spark, conf, ITEM_POPULARITY,
            tr.decay_merge(old_pop, pop_delta, ["item_id"], day, m.half_life_days).withColumn("as_of", tr.date_lit(day)),
            update_when="true",
        )
        touched = delta.select("from_item").distinct()
        counts = (
            lakehouse.read_table(spark, conf, ITEM_TRANSITION_COUNTS)
            .join(touched, "from_item", "left_semi")
            .select(*keys_i, tr.decayed(F.col("count"), F.col("as_of"), day, m.half_life_days).alias("count"))
        )
        popularity = lakehouse.read_table(spark, conf, ITEM_POPULARITY).select(
            "item_id", tr.decayed(F.col("count"), F.col("as_of"), day, m.half_life_days).alias("count")
        )
        successors = tr.item_successors(counts, popularity, m.item_smoothing, m.top_n_successors)
        lakehouse.replace_groups(
            spark, conf, ITEM_TRANSITIONS, successors.withColumn("updated_through", tr.date_lit(day)), ("from_item",)
        )


def add_arguments(parser) -> None:
    parser.add_argument("--date", type=parse_date, help="the night to process (YYYY-MM-DD, UTC)")
    parser.add_argument("--from", dest="start", type=parse_date, help="first night of a backfill")
    parser.add_argument("--to", dest="end", type=parse_date, help="last night of a backfill (inclusive)")


def run_from_args(spark: SparkSession, conf: Config, args) -> list[NightReport]:
    job = MigrationJob(spark, conf)
    if args.date is not None:
        return [job.run(args.date)]
    return job.backfill(args.start, args.end)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console script / spark-submit entry: the cluster decides the master."""
    from driftrec.spark import build_spark

    parser = base_parser("Interest migration: transitions, decayed counts, interest drift for one night or a range.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (args.date is None) == (args.start is None or args.end is None) or (args.date and (args.start or args.end)):
        parser.error("give either --date, or both --from and --to")
    conf = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spark = build_spark(conf, app_name="driftrec-migrate")
    for report in run_from_args(spark, conf, args):
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
