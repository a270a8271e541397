"""The migration night as ``jobs/migrate.py`` ran it before the one-pass night (``driftrec.migration.night``): a
reference for ``tests/test_migration_night.py``, which checks that the pass stages the same rows. It issues ~20
Spark actions per night (a checkpoint per intermediate), which is why it was replaced; do not use it in jobs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.migration import drift, fit, interest, kernels
from driftrec.migration import transitions as tr
from driftrec.migration.state import StagedState, materialise
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    EVENTS,
    ITEM_POPULARITY,
    ITEM_TRANSITION_COUNTS,
    ITEM_TRANSITIONS,
    USER_DRIFT,
    USER_INTEREST,
    USER_LAST_EVENT,
    USER_TRANSITIONS,
)
from jobs.migrate import NightReport


class OldNight:
    def __init__(self, spark, conf):
        self.spark, self.conf, self.m = spark, conf, conf.migration

    def night(self, day: dt.date, state: StagedState, item_cats: DataFrame) -> NightReport:
        spark, m = self.spark, self.m
        events = materialise(self._events(day))
        n_events = events.count()
        active = events.select("user_id").distinct()

        carried = state.read(USER_LAST_EVENT).join(active, "user_id", "left_semi")
        pairs = materialise(tr.transition_pairs(events, carried, m.gap_minutes))

        # Global category matrix: before the night (the prior's P_g and g) and after it (published).
        old_global = state.read(CATEGORY_TRANSITIONS).withColumnRenamed("updated_through", "as_of")
        categories = materialise(
            item_cats.select("category").unionByName(old_global.select(F.col("from_cat").alias("category"))).distinct()
        )
        cat_pairs = materialise(tr.category_pairs(pairs, item_cats))
        keys_g = ["from_cat", "to_cat"]
        pre_global = materialise(tr.global_category_matrix(
            tr.decay_merge(old_global, cat_pairs.limit(0).select(*keys_g, "n"), keys_g, day, m.half_life_days),
            categories,
            m.category_smoothing,
        ))
        post_global = materialise(tr.global_category_matrix(
            tr.decay_merge(old_global, cat_pairs.select(*keys_g, "n"), keys_g, day, m.half_life_days),
            categories,
            m.category_smoothing,
        ))
        popularity = materialise(tr.category_popularity(pre_global, m.category_smoothing))

        # Interest: the state before the night predicts the night's evidence (the fit), then absorbs it.
        evidence = tr.category_evidence(events, item_cats)
        movers = evidence.select("user_id").distinct()
        keys_u = ["user_id", "from_cat", "to_cat"]
        old_user = state.read(USER_TRANSITIONS).withColumnRenamed("updated_through", "as_of")
        mover_counts = old_user.join(movers, "user_id", "left_semi").select(
            *keys_u, tr.decayed(F.col("count"), F.col("as_of"), day, m.half_life_days).alias("count")
        )
        previous = (
            state.read(USER_INTEREST)
            .join(movers, "user_id", "left_semi")
            .select(
                "user_id",
                "category",
                "p",
                tr.decayed(F.col("recent_count"), F.col("as_of"), day, m.recent_half_life_days).alias("rt_prev"),
                tr.decayed(F.col("long_term_count"), F.col("as_of"), day, m.baseline_half_life_days).alias("lt_prev"),
            )
        )
        frame = materialise(night_frame(
            movers, categories, previous, evidence, popularity, mover_counts, pre_global, m.shrinkage_strength
        ))
        a, b, method, ll, ll_default, n_fit, n_users = self._drift_params(frame, day, state)
        moved = materialise(
            updated_interest(frame, a, b, m.prior_strength)
            .withColumn("rt_new", F.col("rt_prev") + F.col("n"))
            .withColumn("lt_new", F.col("lt_prev") + F.col("n"))
        )

        # ---- staged writes: later nights of the batch read them, the batch commits them ----
        state.upsert(CATEGORY_TRANSITIONS, post_global.withColumn("updated_through", tr.date_lit(day)))
        user_delta = cat_pairs.select(*keys_u, "n")
        user_rows = tr.decay_merge(
            old_user.join(user_delta.select("user_id").distinct(), "user_id", "left_semi"),
            user_delta, keys_u, day, m.half_life_days,
        )
        state.upsert(
            USER_TRANSITIONS,
            tr.shrunk_user_rows(user_rows, post_global, m.shrinkage_strength)
            .withColumn("updated_through", tr.date_lit(day)),
        )
        self._item_tables(day, events, pairs, state)
        state.upsert(
            USER_INTEREST,
            moved.select("user_id", "category", F.col("p_new").alias("p"), F.col("rt_new").alias("recent_count"),
                         F.col("lt_new").alias("long_term_count"), tr.date_lit(day).alias("as_of")),
        )
        state.upsert(USER_LAST_EVENT, tr.last_events(events))
        state.replace_dates(
            USER_DRIFT,
            drift.user_drift(moved, m.drift_smoothing, m.drift_threshold).withColumn("ds", tr.date_lit(day)),
        )
        params = spark.createDataFrame(
            [(day, a, b, method, ll, ll_default, n_events, float(n_fit), n_users)],
            "ds date, a double, b double, method string, log_likelihood double, log_likelihood_default double, "
            "n_events long, n_fit_events double, n_users long",
        ).withColumn("finished_at", F.current_timestamp())
        state.replace_dates(DRIFT_PARAMS, params)

        report = NightReport(day, n_events, n_users, a, b, method, ll)

        return report

    def _events(self, day: dt.date) -> DataFrame:
        if not lakehouse.table_exists(self.spark, self.conf, EVENTS):
            return self.spark.createDataFrame([], "user_id bigint, item_id bigint, event_ts timestamp, event_id string")
        return (
            lakehouse.read_table(self.spark, self.conf, EVENTS)
            .where(F.col("event_date") == tr.date_lit(day))
            .select(*tr.EVENT_COLS)
        )

    def _drift_params(self, frame: DataFrame, day: dt.date, state: StagedState):
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
            state.read(DRIFT_PARAMS)
            .where((F.col("method") == "fitted") & (F.col("ds") < tr.date_lit(day)))
            .orderBy(F.col("ds").desc())
            .select("a", "b")
            .first()
        )
        if last is None:
            return m.default_a, m.default_b, "default", ll_default, ll_default, n_fit, n_users
        ll = fit.log_likelihood_at(held_out, last["a"], last["b"]) if n_fit else None
        return last["a"], last["b"], "carried", ll, ll_default, n_fit, n_users

    def _item_tables(self, day: dt.date, events: DataFrame, pairs: DataFrame, state: StagedState) -> None:
        """Item pair counts and popularity (state), then the pruned successor lists of the items that moved."""
        m = self.m
        keys_i = ["from_item", "to_item"]
        delta = tr.item_pairs(pairs).groupBy(*keys_i).agg(F.sum("n").alias("n"))
        old = state.read(ITEM_TRANSITION_COUNTS).join(delta.select(*keys_i), keys_i, "left_semi")
        state.upsert(
            ITEM_TRANSITION_COUNTS,
            tr.decay_merge(old, delta, keys_i, day, m.item_half_life_days).withColumn("as_of", tr.date_lit(day)),
        )
        pop_delta = events.groupBy("item_id").agg(F.count(F.lit(1)).cast("double").alias("n"))
        old_pop = state.read(ITEM_POPULARITY).join(pop_delta.select("item_id"), "item_id", "left_semi")
        state.upsert(
            ITEM_POPULARITY,
            tr.decay_merge(old_pop, pop_delta, ["item_id"], day, m.item_half_life_days)
            .withColumn("as_of", tr.date_lit(day)),
        )
        touched = delta.select("from_item").distinct()
        counts = (
            state.read(ITEM_TRANSITION_COUNTS)
            .join(touched, "from_item", "left_semi")
            .select(*keys_i, tr.decayed(F.col("count"), F.col("as_of"), day, m.item_half_life_days).alias("count"))
        )
        popularity = state.read(ITEM_POPULARITY).select(
            "item_id", tr.decayed(F.col("count"), F.col("as_of"), day, m.item_half_life_days).alias("count")
        )
        successors = tr.item_successors(counts, popularity, m.item_smoothing, m.top_n_successors)
        state.replace_groups(
            ITEM_TRANSITIONS, successors.withColumn("updated_through", tr.date_lit(day)), ("from_item",)
        )


# ---- the old night's pandas steps (the production night runs them in one pass: driftrec/migration/night.py) ----
UPDATED_SCHEMA = interest.FRAME_SCHEMA + ", q double, p_new double"


def night_frame(
    users: DataFrame,
    categories: DataFrame,
    previous: DataFrame,
    evidence: DataFrame,
    popularity: DataFrame,
    user_counts: DataFrame,
    global_matrix: DataFrame,
    strength: float,
) -> DataFrame:
    """Everything one night needs per ``(user_id, category)`` of the active users, dense over the categories.

    Columns: ``p`` (previous interest, ``g`` for a new user), ``m`` (migration term), ``g``, ``n`` (the night's
    evidence), ``has_prev``, ``rt_prev``/``lt_prev`` (short/long-term counts, already decayed to the night).
    ``previous(user_id, category, p, rt_prev, lt_prev)`` is the stored state of these users.
    """
    cats, g, pg = interest.dense_categories(popularity, global_matrix, categories)
    null = F.lit(None).cast("double")
    cells = (
        users.select("user_id", F.lit(None).cast("string").alias("category"), null.alias("p"), null.alias("rt"),
                     null.alias("lt"), null.alias("n"))
        .unionByName(previous.select("user_id", "category", "p", F.col("rt_prev").alias("rt"),
                                     F.col("lt_prev").alias("lt"), null.alias("n")))
        .unionByName(evidence.select("user_id", "category", null.alias("p"), null.alias("rt"), null.alias("lt"),
                                     F.col("n").cast("double")))
        .join(users.select("user_id").distinct(), "user_id", "left_semi")
    )
    return interest.interest_frame(cells, user_counts, cats, g, pg, strength)


def _update_function(a: float, b: float, prior_strength: float):
    def per_bucket(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.drop(columns="bucket").sort_values(["user_id", "category"], kind="stable")
        _, u = np.unique(frame["user_id"].to_numpy(np.int64), return_inverse=True)
        cats, c = np.unique(frame["category"].to_numpy(str), return_inverse=True)
        shape = (u.max(initial=-1) + 1, len(cats))
        grid = {}
        for col in ("p", "m", "g", "n"):
            x = np.zeros(shape)
            x[u, c] = frame[col].to_numpy(np.float64)
            grid[col] = x
        q = kernels.prior_from_terms(grid["p"], grid["m"], grid["g"], a, b)
        p_new = kernels.posterior(q, grid["n"], prior_strength)
        return frame.assign(q=q[u, c], p_new=p_new[u, c])

    return per_bucket


def updated_interest(frame: DataFrame, a: float, b: float, prior_strength: float) -> DataFrame:
    """``p_new = (kappa*q + n) / (kappa + N_u)`` (the kernel's posterior): adds ``q`` and ``p_new`` to the night
    frame; sums to 1 per user."""
    tr.require_columns(frame, tuple(c.split()[0] for c in interest.FRAME_SCHEMA.split(", ")), "updated frame")
    cols = [c.split()[0] for c in interest.FRAME_SCHEMA.split(", ")]
    return frame.select(interest.user_buckets(frame), *cols).groupBy("bucket").applyInPandas(
        _update_function(a, b, prior_strength), UPDATED_SCHEMA)
