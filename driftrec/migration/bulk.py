"""The engine's state as of a cutoff date, built from the whole history in one pass instead of night by night.

A history of thousands of distinct days (ml-latest-small spans 4,110) would cost thousands of nightly runs. Most
of the state is linear in the events: a decayed count as of the cutoff is ``sum_e n_e * 2^(-(cutoff - d_e)/T)``,
one aggregation (:func:`transitions.counts_from_scratch`). Only a user's interest ``p`` is a recurrence over the
user's active days; it runs in a cogrouped pandas UDF over buckets of users, each bucket one batched call of
:func:`kernels.interest_recurrence`. Two simplifications against the nightly engine, both leak-free (nothing
after the cutoff is read):

* the global category matrix ``P_g`` and popularity ``g`` inside the recurrence are their values at the cutoff,
  not on each night;
* one ``(a, b)`` for the whole history, fitted by maximum likelihood on every held-out user-day (a user's day
  with a prior), alternating fit and recurrence until ``(a, b)`` stops moving.

User-level rows (interest, long/short-term counts, drift) are as of each user's last active day, as the nightly
engine leaves them; the global tables are as of the cutoff.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec.config import MigrationConfig
from driftrec.migration import drift, fit, interest, kernels
from driftrec.migration import transitions as tr

RECURRENCE_SCHEMA = (
    "user_id long, kind string, day date, category string, p double, m double, g double, n double, "
    "p_new double, rt_new double, lt_new double"
)
MAX_FIT_ROUNDS = 4


@dataclass(frozen=True)
class BulkState:
    """DataFrames shaped like the engine's tables (see :mod:`driftrec.tables`), all computed from events <= cutoff."""

    cutoff: dt.date
    first_day: dt.date
    user_transitions: DataFrame
    category_transitions: DataFrame
    item_transition_counts: DataFrame
    item_transitions: DataFrame
    item_popularity: DataFrame
    user_interest: DataFrame
    user_last_event: DataFrame
    user_drift: DataFrame
    a: float
    b: float
    method: str
    log_likelihood: float | None
    log_likelihood_default: float | None
    n_events: int
    n_fit_events: float
    n_users: int


def _dense(cats: list[str], pairs: pd.DataFrame | None = None, cells: pd.DataFrame | None = None):
    index = {c: i for i, c in enumerate(cats)}
    if cells is not None:
        v = np.zeros(len(cats))
        np.add.at(v, cells["category"].map(index).to_numpy(), cells["n"].to_numpy())
        return v
    m = np.zeros((len(cats), len(cats)))
    np.add.at(m, (pairs["from_cat"].map(index).to_numpy(), pairs["to_cat"].map(index).to_numpy()),
              pairs["n"].to_numpy())
    return m


def _day_numbers(dates: pd.Series) -> np.ndarray:
    return pd.to_datetime(dates).to_numpy().astype("datetime64[D]").astype(np.int64)


def interest_recurrence(cats: list[str], g: np.ndarray, global_p: np.ndarray, m: MigrationConfig, a: float, b: float):
    """The function for ``cogroup(evidence, pairs).applyInPandas`` over a bucket of users: rows of
    :data:`RECURRENCE_SCHEMA`, from one :func:`kernels.interest_recurrence` call for all the bucket's users.

    ``kind = 'fit'``: a held-out cell (a day with a prior, ``n > 0``) with the prior's inputs; ``kind = 'state'``:
    the user's K cells after their last active day (``p`` before it, ``p_new`` after, decayed evidence as of it).
    Transitions on a day without category evidence are not read (there is no step for them to follow).
    """
    index = pd.Index(cats)
    columns = [c.split()[0] for c in RECURRENCE_SCHEMA.split(", ")]
    k = len(cats)

    def per_bucket(evidence: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
        if evidence.empty:
            return pd.DataFrame(columns=columns)
        users, user_of = np.unique(evidence["user_id"].to_numpy(np.int64), return_inverse=True)
        day = _day_numbers(evidence["event_date"])
        span = int(day.max() - day.min()) + 1
        key = user_of.astype(np.int64) * span + (day - day.min())
        keys, row_of = np.unique(key, return_inverse=True)  # sorted by user, then day: the kernel's rows
        row_user, row_day = keys // span, (keys % span + day.min()).astype(np.float64)
        ev = np.zeros((len(keys), k))
        np.add.at(ev, (row_of, index.get_indexer(evidence["category"])), evidence["n"].to_numpy(np.float64))
        starts = np.searchsorted(row_user, np.arange(len(users) + 1))
        if pairs.empty:
            pair_arrays = (np.zeros(0, np.int64),) * 3 + (np.zeros(0),)
        else:
            pair_user = pairs["user_id"].to_numpy(np.int64)
            pu = np.minimum(np.searchsorted(users, pair_user), len(users) - 1)
            offset = _day_numbers(pairs["to_date"]) - day.min()
            pkey = pu * span + offset
            at = np.minimum(np.searchsorted(keys, pkey), len(keys) - 1)
            ok = (keys[at] == pkey) & (users[pu] == pair_user) & (offset >= 0) & (offset < span)
            pair_arrays = (at[ok], index.get_indexer(pairs["from_cat"])[ok], index.get_indexer(pairs["to_cat"])[ok],
                           pairs["n"].to_numpy(np.float64)[ok])
        out = kernels.interest_recurrence(
            starts, row_day, ev, pair_arrays, g, global_p, a, b,
            half_life_days=m.half_life_days, recent_half_life_days=m.recent_half_life_days,
            baseline_half_life_days=m.baseline_half_life_days, shrinkage_strength=m.shrinkage_strength,
            prior_strength=m.prior_strength,
        )
        dates = pd.Series(row_day.astype(np.int64).astype("datetime64[D]")).dt.date.to_numpy()
        has_prev = np.ones(len(keys), bool)
        has_prev[starts[:-1]] = False
        r, c = np.nonzero(has_prev[:, None] & (ev > 0))
        last = starts[1:] - 1
        sr, sc = np.repeat(last, k), np.tile(np.arange(k), len(last))
        nan = np.full(len(r), np.nan)
        fit_rows = pd.DataFrame({
            "user_id": users[row_user[r]], "kind": "fit", "day": dates[r], "category": np.asarray(cats)[c],
            "p": out["p"][r, c], "m": out["m"][r, c], "g": g[c], "n": ev[r, c], "p_new": nan, "rt_new": nan,
            "lt_new": nan,
        })
        state_rows = pd.DataFrame({
            "user_id": users[row_user[sr]], "kind": "state", "day": dates[sr], "category": np.asarray(cats)[sc],
            "p": out["p"][sr, sc], "m": out["m"][sr, sc], "g": g[sc], "n": ev[sr, sc], "p_new": out["p_new"][sr, sc],
            "rt_new": out["rt"][sr, sc], "lt_new": out["lt"][sr, sc],
        })
        return pd.concat([fit_rows, state_rows], ignore_index=True)[columns]

    return per_bucket


def alternate_fit(fit_at, start: tuple[float, float], step: float, rounds: int = MAX_FIT_ROUNDS):
    """``(a, b, fitted)``: the last of at most ``rounds`` fits ``fit_at(a, b)`` (the fit on the recurrence run at
    ``(a, b)``; ``None``: too little evidence), stopping once a fit lands within ``step / 10`` of where it ran.

    Damped: the next run is at the mean of the current point and its fit. A fit on a state built at the wrong
    ``(a, b)`` overshoots to the other side of the truth (measured slope about -1), so rerunning at the fit itself
    cycles between two points and never settles (tests/test_migration_fit_recovery.py)."""
    a, b = start
    result = None
    for _ in range(rounds):
        got = fit_at(a, b)
        if got is None:
            break
        result = got
        if abs(got[0] - a) + abs(got[1] - b) < step / 10:
            break
        a, b = round((a + got[0]) / 2, 10), round((b + got[1]) / 2, 10)
    return (*start, False) if result is None else (*result, True)


def build_state(
    spark: SparkSession, m: MigrationConfig, events: DataFrame, item_cats: DataFrame, cutoff: dt.date
) -> BulkState:
    """The state as of ``cutoff`` from ``events(user_id, item_id, event_ts, event_id)``; later events are dropped."""
    tr.require_columns(events, tr.EVENT_COLS, "bulk events")
    events = events.where(F.to_date("event_ts") <= tr.date_lit(cutoff)).select(*tr.EVENT_COLS).cache()
    stats = events.agg(F.count(F.lit(1)).alias("n"), F.min(F.to_date("event_ts")).alias("first")).first()
    if not stats["n"]:
        raise ValueError(f"bulk migration state: no events on or before {cutoff}")
    pairs = tr.transition_pairs(events, None, m.gap_minutes).cache()
    cat_pairs = tr.category_pairs(pairs, item_cats).cache()
    categories = item_cats.select("category").distinct()

    # The item level has its own half-life (None: plain sums), the category level half_life_days.
    item_counts = tr.counts_from_scratch(tr.item_pairs(pairs), ["from_item", "to_item"], "to_date", cutoff,
                                         m.item_half_life_days)
    popularity = tr.counts_from_scratch(
        events.select("item_id", F.to_date("event_ts").alias("d"), F.lit(1.0).alias("n")), ["item_id"], "d", cutoff,
        m.item_half_life_days,
    )
    global_counts = tr.counts_from_scratch(cat_pairs, ["from_cat", "to_cat"], "to_date", cutoff, m.half_life_days)
    global_matrix = tr.global_category_matrix(global_counts, categories, m.category_smoothing).cache()
    user_counts = tr.counts_from_scratch(cat_pairs, ["user_id", "from_cat", "to_cat"], "to_date", cutoff,
                                         m.half_life_days)

    # Dense K x K global matrix and g on the driver: K is the number of categories, small by construction.
    gm = global_matrix.toPandas()
    cats = sorted(set(gm["from_cat"]))
    pg = _dense(cats, pairs=gm.rename(columns={"prob": "n"})[["from_cat", "to_cat", "n"]])
    g_df = tr.category_popularity(global_matrix, m.category_smoothing).toPandas()
    g = _dense(cats, cells=g_df.rename(columns={"g": "n"}))

    # Both sides of the cogroup come from the same events: materialised, so Spark sees two inputs, not a self-join.
    evidence = tr.category_evidence(events, item_cats).groupBy("user_id", "category", "event_date").agg(
        F.sum("n").alias("n")).localCheckpoint(eager=True)
    user_pairs = cat_pairs.groupBy("user_id", "from_cat", "to_cat", "to_date").agg(
        F.sum("n").alias("n")).localCheckpoint(eager=True)

    # Users are hashed into buckets: each pandas call steps a whole bucket of users through the kernel at once.
    bucket = interest.user_buckets(evidence)
    evidence_b, user_pairs_b = evidence.select(bucket, "*"), user_pairs.select(bucket, "*")

    def recurrence(a: float, b: float) -> DataFrame:
        fn = interest_recurrence(cats, g, pg, m, a, b)
        return (
            evidence_b.groupBy("bucket").cogroup(user_pairs_b.groupBy("bucket"))
            .applyInPandas(fn, RECURRENCE_SCHEMA)
            .localCheckpoint(eager=True)
        )

    if m.pin_a is not None:
        a, b, method = m.pin_a, m.pin_b, "pinned"
        rows = recurrence(a, b)
    else:
        last: dict = {}

        def fit_at(a: float, b: float) -> tuple[float, float] | None:
            last["ab"], last["rows"] = (a, b), recurrence(a, b)
            held = last["rows"].where(F.col("kind") == "fit")
            n_fit = held.agg(F.sum("n")).first()[0] or 0.0
            if n_fit < m.min_fit_events:
                return None
            result = fit.fit_drift(spark, held, m.fit_grid_step, total=n_fit)
            return None if result is None else (result.a, result.b)

        a, b, fitted = alternate_fit(fit_at, (m.default_a, m.default_b), m.fit_grid_step)
        method = "bulk-fitted" if fitted else "default"
        rows = last["rows"] if last["ab"] == (a, b) else recurrence(a, b)
    held = rows.where(F.col("kind") == "fit")
    n_fit = float(held.agg(F.sum("n")).first()[0] or 0.0)
    ll = fit.log_likelihood_at(held, a, b) if n_fit else None
    ll_default = fit.log_likelihood_at(held, m.default_a, m.default_b) if n_fit else None

    state = rows.where(F.col("kind") == "state")
    interest_rows = state.select(
        "user_id", "category", F.col("p_new").alias("p"), F.col("rt_new").alias("recent_count"),
        F.col("lt_new").alias("long_term_count"), F.col("day").alias("as_of"),
    )
    drift_rows = drift.user_drift(state, m.drift_smoothing, m.drift_threshold).join(
        state.select("user_id", F.col("day").alias("ds")).distinct(), "user_id"
    )
    return BulkState(
        cutoff=cutoff,
        first_day=stats["first"],
        user_transitions=tr.shrunk_user_rows(user_counts, global_matrix, m.shrinkage_strength)
        .withColumn("updated_through", tr.date_lit(cutoff)),
        category_transitions=global_matrix.withColumn("updated_through", tr.date_lit(cutoff)),
        item_transition_counts=item_counts.withColumn("as_of", tr.date_lit(cutoff)),
        item_transitions=tr.item_successors(item_counts, popularity, m.item_smoothing, m.top_n_successors)
        .withColumn("updated_through", tr.date_lit(cutoff)),
        item_popularity=popularity.withColumn("as_of", tr.date_lit(cutoff)),
        user_interest=interest_rows,
        user_last_event=tr.last_events(events),
        user_drift=drift_rows,
        a=a, b=b, method=method, log_likelihood=ll, log_likelihood_default=ll_default,
        n_events=int(stats["n"]), n_fit_events=n_fit,
        n_users=int(state.select("user_id").distinct().count()),
    )
