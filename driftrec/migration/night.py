"""One migration night in a handful of Spark actions: one read of the small inputs, ONE grouped-pandas pass, one
tiny collect, the (a, b) fit, then the nine tables staged (plan: ``night_jobs.md``, section 2).

``jobs/migrate.py`` (``MigrationJob._night``) runs every night through :func:`run_night`. The path it replaced
(~20 driver-side actions per night: a checkpoint per intermediate, several collects) lives on as a test reference,
``tests/reference_night.py``; ``tests/test_migration_night.py`` checks that both stage the same rows.

A night here is, in actions:

1. :func:`night_preamble` (1 collect): the stored global category counts decayed to the night, the categories, the
   last fitted ``(a, b)`` and the night's approximate user count; numpy gives ``P_g`` and ``g`` before the night.
2. :func:`night_pass` (lazy; the caller materialises it once): per bucket of the night's users one step of
   :func:`kernels.interest_recurrence` from their stored state, plus the Spark-side rows (item pairs, item events,
   last events, category pair totals, the event count), each row tagged by ``kind``.
3. :func:`night_totals` (1 collect): the K x K category pair totals and one stats row.
4. :func:`drift_params`: pinned and carried ``(a, b)`` need no action; a fit runs the grid on the pass's cells.
5. :func:`stage_night`: every table staged from the pass and the totals, lazily (no action before the commit).

For one day ``p``, ``m``, ``rt`` and ``lt`` do not depend on ``(a, b)`` and ``p_new`` is closed-form in them
(:func:`kernels.posterior_from_total`, on Columns), so the pass runs before the fit.

The job reads the night's events pinned to one ``events`` version for the batch, so the preamble and every branch of
the pass see the same rows. Stored user transitions are densified over the night's categories (the catalogue's and
the stored global matrix's, which hold every category ever counted), so a stored row outside them would be dropped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from driftrec.config import MigrationConfig
from driftrec.migration import drift, fit, interest, kernels
from driftrec.migration import transitions as tr
from driftrec.migration.state import StagedState, materialise
from driftrec.tables import (
    CATEGORY_TRANSITIONS,
    DRIFT_PARAMS,
    ITEM_POPULARITY,
    ITEM_TRANSITION_COUNTS,
    ITEM_TRANSITIONS,
    USER_DRIFT,
    USER_INTEREST,
    USER_LAST_EVENT,
    USER_TRANSITIONS,
)

# Row kinds of the pass. Into the bucket function: EVIDENCE, STORED_INTEREST, USER_TRANSITION (stored, decayed),
# USER_PAIR. Out of the pass: CELL (K per user with evidence), USER_TRANSITION (new counts of users with category
# pairs), and the Spark-side CATEGORY_PAIR, ITEM_PAIR, ITEM_EVENTS, LAST_EVENT, EVENT_COUNT.
EVIDENCE, STORED_INTEREST, USER_PAIR = "ev", "int", "pair"
CELL, USER_TRANSITION, CATEGORY_PAIR = "cell", "ut", "cp"
ITEM_PAIR, ITEM_EVENTS, LAST_EVENT, EVENT_COUNT = "ip", "pop", "last", "events"
BUCKET_SCHEMA = (
    "kind string, user_id long, category string, from_cat string, to_cat string, has_prev boolean, p double, "
    "m double, g double, n double, n_user double, rt_new double, lt_new double, count double"
)
PARAMS_SCHEMA = (
    "ds date, a double, b double, method string, log_likelihood double, log_likelihood_default double, "
    "n_events long, n_fit_events double, n_users long"
)


@dataclass(frozen=True)
class NightInputs:
    """Everything small a night needs, from one collect: sorted categories, the (K, K) global counts decayed to
    the night (before it), ``P_g`` (their smoothed rows), ``g`` (K,), the last fitted ``(a, b)`` before the night."""

    cats: list[str]
    pre_counts: np.ndarray
    pre_p: np.ndarray
    g: np.ndarray
    last_fitted: tuple[float, float] | None
    approx_users: int


@dataclass(frozen=True)
class NightTotals:
    """The pass summed: (K, K) category pair counts, the event count of the very read the pass made, the users
    that moved, the held-out evidence and its log-likelihood at the default and at the known (pinned, else last
    fitted) ``(a, b)``; a log-likelihood is None without held-out cells."""

    cat_pairs: np.ndarray
    n_events: int
    n_users: int
    n_fit: float
    ll_default: float | None
    ll_known: float | None


@dataclass(frozen=True)
class NightParams:
    """The night's ``drift_params`` row (less its date and timestamp)."""

    a: float
    b: float
    method: str
    log_likelihood: float | None
    log_likelihood_default: float | None
    n_events: int
    n_fit_events: float
    n_users: int


def _tagged(*parts: tuple[str, DataFrame]) -> DataFrame:
    """``(kind, df)`` parts as one DataFrame with a ``kind`` column; columns a part lacks are null."""
    frames = [df.select(F.lit(kind).alias("kind"), "*") for kind, df in parts]
    return reduce(lambda x, y: x.unionByName(y, allowMissingColumns=True), frames)


def _kind(night: DataFrame, kind: str) -> DataFrame:
    return night.where(F.col("kind") == kind)


# ---- 1. preamble ----------------------------------------------------------------------------------------------
def night_preamble(state: StagedState, item_cats: DataFrame, events: DataFrame, day: dt.date,
                   m: MigrationConfig) -> NightInputs:
    """One collect: the categories (the catalogue's and the stored matrix's), the stored global counts decayed to
    ``day``, the last ``fitted`` drift_params row before ``day`` and the approximate number of the night's users."""
    glob = state.read(CATEGORY_TRANSITIONS)
    last_fit = (
        state.read(DRIFT_PARAMS)
        .where((F.col("method") == "fitted") & (F.col("ds") < tr.date_lit(day)))
        .orderBy(F.col("ds").desc())
        .limit(1)
    )
    rows = _tagged(
        ("glob", glob.select("from_cat", "to_cat",
                             tr.decayed(F.col("count"), F.col("updated_through"), day, m.half_life_days).alias("x"))),
        ("cat", item_cats.select(F.col("category").alias("from_cat")).unionByName(glob.select("from_cat")).distinct()),
        ("fit", last_fit.select(F.col("a").alias("x"), F.col("b").alias("y"))),
        ("users", events.agg(F.approx_count_distinct("user_id").cast("double").alias("x"))),
    ).collect()
    cats = sorted({r["from_cat"] for r in rows if r["kind"] == "cat"})
    index = {c: i for i, c in enumerate(cats)}
    pre = np.zeros((len(cats), len(cats)))
    for r in rows:
        if r["kind"] == "glob" and r["from_cat"] in index and r["to_cat"] in index:
            pre[index[r["from_cat"]], index[r["to_cat"]]] += r["x"]
    fitted = [(float(r["x"]), float(r["y"])) for r in rows if r["kind"] == "fit"]
    users = next(int(r["x"] or 0) for r in rows if r["kind"] == "users")
    return NightInputs(cats=cats, pre_counts=pre, pre_p=kernels.smoothed_rows(pre, m.category_smoothing),
                       g=kernels.category_popularity(pre, m.category_smoothing),
                       last_fitted=fitted[0] if fitted else None, approx_users=users)


# ---- 2. the pass ----------------------------------------------------------------------------------------------
def night_bucket(cats: list[str], g: np.ndarray, pre_p: np.ndarray, m: MigrationConfig):
    """The pass's pandas function over a bucket of users: rows of :data:`BUCKET_SCHEMA`.

    In: ``ev`` rows ``(user_id, category, n)`` (the night's evidence; its users are the ones that move), ``int``
    rows ``(user_id, category, p, rt, lt)`` and ``ut`` rows ``(user_id, from_cat, to_cat, count)`` (their stored
    interest and transition counts, already decayed to the night), ``pair`` rows ``(user_id, from_cat, to_cat,
    n)`` (the night's category pairs). Out: ``cell`` rows, K per moving user (``has_prev``, ``p``, ``m``, ``g``,
    ``n``, ``n_user`` = the user's evidence total, ``rt_new``, ``lt_new``), and ``ut`` rows with the new counts
    (stored + tonight) of every stored or new pair of the users with pairs tonight. One
    :func:`kernels.interest_recurrence` step per bucket; ``(a, b)`` do not enter any output.
    """
    index = pd.Index(cats)
    k = len(cats)
    names = np.asarray(cats, dtype=object)
    columns = [c.split()[0] for c in BUCKET_SCHEMA.split(", ")]
    strings = {c.split()[0]: object for c in BUCKET_SCHEMA.split(", ") if c.split()[1] == "string"}

    def per_bucket(rows: pd.DataFrame) -> pd.DataFrame:
        kind = rows["kind"].to_numpy()
        ev, prev, stored, pairs = (rows[kind == x] for x in (EVIDENCE, STORED_INTEREST, USER_TRANSITION, USER_PAIR))
        users = np.unique(ev["user_id"].to_numpy(np.int64))
        if k == 0 or len(users) == 0:
            return pd.DataFrame(columns=columns)
        n_users = len(users)

        def owner(part: pd.DataFrame):
            ids = part["user_id"].to_numpy(np.int64)
            u = np.minimum(np.searchsorted(users, ids), n_users - 1)
            return u, users[u] == ids

        def dense(part: pd.DataFrame, col: str, u: np.ndarray, ok: np.ndarray, c: np.ndarray) -> np.ndarray:
            x = np.zeros((n_users, k))
            sel = ok & (c >= 0) & part[col].notna().to_numpy()
            np.add.at(x, (u[sel], c[sel]), part[col].to_numpy(np.float64)[sel])
            return x

        u, ok = owner(ev)
        evidence = dense(ev, "n", u, ok, index.get_indexer(ev["category"]))
        u, ok = owner(prev)
        has_prev = np.zeros(n_users, bool)
        has_prev[u[ok & prev["p"].notna().to_numpy()]] = True
        c = index.get_indexer(prev["category"])
        p, rt, lt = (dense(prev, col, u, ok, c) for col in ("p", "rt", "lt"))

        counts, seen = np.zeros((n_users, k, k)), np.zeros((n_users, k, k), bool)
        u, ok = owner(stored)
        f, t = index.get_indexer(stored["from_cat"]), index.get_indexer(stored["to_cat"])
        ok &= (f >= 0) & (t >= 0)
        np.add.at(counts, (u[ok], f[ok], t[ok]), stored["count"].to_numpy(np.float64)[ok])
        seen[u[ok], f[ok], t[ok]] = True
        u, ok = owner(pairs)
        f, t = index.get_indexer(pairs["from_cat"]), index.get_indexer(pairs["to_cat"])
        ok &= (f >= 0) & (t >= 0)
        seen[u[ok], f[ok], t[ok]] = True
        paired = np.zeros(n_users, bool)
        paired[u[ok]] = True

        # One row per user (row u is user u); a = b = 0 because no output used here depends on (a, b).
        out = kernels.interest_recurrence(
            np.arange(n_users + 1), np.zeros(n_users), evidence,
            (u[ok], f[ok], t[ok], pairs["n"].to_numpy(np.float64)[ok]), g, pre_p, 0.0, 0.0,
            half_life_days=m.half_life_days, recent_half_life_days=m.recent_half_life_days,
            baseline_half_life_days=m.baseline_half_life_days, shrinkage_strength=m.shrinkage_strength,
            prior_strength=m.prior_strength,
            initial={"p": np.where(has_prev[:, None], p, g), "counts": counts, "rt": rt, "lt": lt},
        )
        cells = pd.DataFrame({
            "kind": CELL, "user_id": np.repeat(users, k), "category": np.tile(names, n_users),
            "has_prev": np.repeat(has_prev, k), "p": out["p"].ravel(), "m": out["m"].ravel(),
            "g": np.tile(np.asarray(g, dtype=np.float64), n_users), "n": evidence.ravel(),
            "n_user": np.repeat(evidence.sum(axis=1), k), "rt_new": out["rt"].ravel(), "lt_new": out["lt"].ravel(),
        })
        uu, ff, tt = np.nonzero(seen & paired[:, None, None])
        moved = pd.DataFrame({"kind": USER_TRANSITION, "user_id": users[uu], "from_cat": names[ff],
                              "to_cat": names[tt], "count": out["counts"][uu, ff, tt]})
        parts = [cells, moved] if len(moved) else [cells]  # (concat warns on empty parts)
        # A column no part has (from_cat, to_cat when no user of the bucket made a transition tonight) comes back as
        # float NaN, which pyarrow converts to a string column as a ChunkedArray that Spark's conversion rejects.
        return pd.concat(parts, ignore_index=True).reindex(columns=columns).astype(strings)

    return per_bucket


def night_pass(state: StagedState, events: DataFrame, item_cats: DataFrame, inp: NightInputs, day: dt.date,
               m: MigrationConfig) -> DataFrame:
    """The night as one lazy DataFrame of tagged rows (see the module docstring); materialise it once.

    ``events(user_id, item_id, event_ts, event_id)`` are the night's; the stored rows come from ``state`` (the
    pinned tables with the batch's earlier nights), read only for the night's users and decayed to ``day``.
    """
    tr.require_columns(events, tr.EVENT_COLS, "night events")
    carried = state.read(USER_LAST_EVENT).join(events.select("user_id").distinct(), "user_id", "left_semi")
    pairs = tr.transition_pairs(events, carried, m.gap_minutes)
    cat_pairs = tr.category_pairs(pairs, item_cats)
    evidence = tr.category_evidence(events, item_cats).select("user_id", "category", "n")
    movers = evidence.select("user_id").distinct()
    stored_interest = state.read(USER_INTEREST).join(movers, "user_id", "left_semi").select(
        "user_id", "category", "p",
        tr.decayed(F.col("recent_count"), F.col("as_of"), day, m.recent_half_life_days).alias("rt"),
        tr.decayed(F.col("long_term_count"), F.col("as_of"), day, m.baseline_half_life_days).alias("lt"),
    )
    stored_counts = state.read(USER_TRANSITIONS).join(movers, "user_id", "left_semi").select(
        "user_id", "from_cat", "to_cat",
        tr.decayed(F.col("count"), F.col("updated_through"), day, m.half_life_days).alias("count"),
    )
    per_user = _tagged((EVIDENCE, evidence), (STORED_INTEREST, stored_interest), (USER_TRANSITION, stored_counts),
                       (USER_PAIR, cat_pairs.select("user_id", "from_cat", "to_cat", "n")))
    bucket = interest.user_buckets(per_user, n_users=inp.approx_users)
    users = per_user.select(bucket, "*").groupBy("bucket").applyInPandas(
        night_bucket(inp.cats, inp.g, inp.pre_p, m), BUCKET_SCHEMA)
    keys_i = ["from_item", "to_item"]
    spark_side = _tagged(
        (CATEGORY_PAIR, cat_pairs.groupBy("from_cat", "to_cat").agg(F.sum("n").alias("n"))),
        (ITEM_PAIR, tr.item_pairs(pairs).groupBy(*keys_i).agg(F.sum("n").alias("n"))),
        (ITEM_EVENTS, events.groupBy("item_id").agg(F.count(F.lit(1)).cast("double").alias("n"))),
        (LAST_EVENT, tr.last_events(events)),
        (EVENT_COUNT, events.agg(F.count(F.lit(1)).cast("double").alias("n"))),
    )
    return users.unionByName(spark_side, allowMissingColumns=True)


# ---- 3. totals and 4. (a, b) ----------------------------------------------------------------------------------
def _held_log_likelihood(a: float, b: float) -> Column:
    held = F.col("has_prev") & (F.col("n") > 0)
    q = F.greatest(interest.prior_column(a, b), F.lit(kernels.LOG_FLOOR))
    return F.sum(F.when(held, F.col("n") * F.log(q)))


def night_totals(night: DataFrame, inp: NightInputs, m: MigrationConfig) -> NightTotals:
    """One collect over the materialised pass: category pair totals (<= K x K rows) and one stats row."""
    known = (m.pin_a, m.pin_b) if m.pin_a is not None else inp.last_fitted
    held = F.col("has_prev") & (F.col("n") > 0)
    stats = _kind(night, CELL).agg(
        F.countDistinct("user_id").cast("double").alias("x"),
        F.sum(F.when(held, F.col("n"))).alias("y"),
        _held_log_likelihood(m.default_a, m.default_b).alias("z"),
        (_held_log_likelihood(*known) if known else F.lit(None).cast("double")).alias("w"),
    )
    rows = _tagged(
        (CATEGORY_PAIR, _kind(night, CATEGORY_PAIR).select("from_cat", "to_cat", F.col("n").alias("x"))),
        ("stats", stats),
        (EVENT_COUNT, _kind(night, EVENT_COUNT).select(F.col("n").alias("x"))),
    ).collect()
    index = {c: i for i, c in enumerate(inp.cats)}
    cp = np.zeros((len(index), len(index)))
    for r in rows:
        if r["kind"] == CATEGORY_PAIR and r["from_cat"] in index and r["to_cat"] in index:
            cp[index[r["from_cat"]], index[r["to_cat"]]] += r["x"]
    (s,) = [r for r in rows if r["kind"] == "stats"]
    return NightTotals(cat_pairs=cp, n_events=int(sum(r["x"] for r in rows if r["kind"] == EVENT_COUNT)),
                       n_users=int(s["x"]), n_fit=float(s["y"] or 0.0), ll_default=s["z"], ll_known=s["w"])


def drift_params(night: DataFrame, inp: NightInputs, tot: NightTotals, m: MigrationConfig) -> NightParams:
    """``(a, b)``: pinned, fitted on the held-out cells (users with a stored interest), carried from the last fit,
    or the default; the rules of ``MigrationJob._drift_params``. Only a fit runs Spark actions (the grids)."""
    common = dict(log_likelihood_default=tot.ll_default, n_events=tot.n_events, n_fit_events=tot.n_fit,
                  n_users=tot.n_users)
    ll_known = float(tot.ll_known or 0.0) if tot.n_fit else None
    if m.pin_a is not None:
        return NightParams(m.pin_a, m.pin_b, "pinned", ll_known, **common)
    if tot.n_fit >= m.min_fit_events:
        held_out = _kind(night, CELL).where(F.col("has_prev"))
        result = fit.fit_drift(night.sparkSession, held_out, m.fit_grid_step, total=tot.n_fit)
        if result is not None:
            return NightParams(result.a, result.b, "fitted", result.log_likelihood, **common)
    if inp.last_fitted is None:
        return NightParams(m.default_a, m.default_b, "default", tot.ll_default, **common)
    return NightParams(*inp.last_fitted, "carried", ll_known, **common)


# ---- 5. the staged rows ---------------------------------------------------------------------------------------
def post_global(inp: NightInputs, tot: NightTotals, m: MigrationConfig) -> tuple[np.ndarray, np.ndarray]:
    """The global matrix after the night: (K, K) counts and smoothed rows."""
    counts = inp.pre_counts + tot.cat_pairs
    return counts, kernels.smoothed_rows(counts, m.category_smoothing)


def category_rows(night: DataFrame, inp: NightInputs, tot: NightTotals, m: MigrationConfig) -> DataFrame:
    """``category_transitions`` after the night, dense K x K: ``(from_cat, to_cat, count, prob)``."""
    counts, prob = post_global(inp, tot, m)
    k = len(inp.cats)
    rows = [(inp.cats[i], inp.cats[j], float(counts[i, j]), float(prob[i, j])) for i in range(k) for j in range(k)]
    return night.sparkSession.createDataFrame(rows, "from_cat string, to_cat string, count double, prob double")


def interest_cells(night: DataFrame, a: float, b: float, m: MigrationConfig) -> DataFrame:
    """The ``cell`` rows with ``p_new = (kappa*q + n) / (kappa + N_u)`` at ``(a, b)``."""
    q = interest.prior_column(a, b)
    return _kind(night, CELL).select(
        "user_id", "category", "has_prev", "p", "m", "g", "n", "rt_new", "lt_new",
        kernels.posterior_from_total(q, F.col("n"), F.col("n_user"), m.prior_strength).alias("p_new"),
    )


def _overlay(base: DataFrame, rows: DataFrame, keys: list[str]) -> DataFrame:
    return base.join(rows.select(*keys).distinct(), keys, "left_anti").unionByName(rows.select(*base.columns))


def item_rows(night: DataFrame, state: StagedState, day: dt.date, m: MigrationConfig):
    """``(item_transition_counts, item_popularity, item_transitions)`` rows of the night, all lazy.

    The successor lists of the night's ``from_item``s read the stored counts and popularity overlaid with the
    night's new rows by hand, so nothing staged has to be materialised to be read back. Item-level counts decay with
    ``migration.item_half_life_days`` (None: plain sums), not the category level's ``half_life_days``."""
    keys = ["from_item", "to_item"]
    delta = _kind(night, ITEM_PAIR).select(*keys, "n")
    stored_counts, stored_pop = state.read(ITEM_TRANSITION_COUNTS), state.read(ITEM_POPULARITY)
    counts = tr.decay_merge(stored_counts.join(delta.select(*keys), keys, "left_semi"), delta, keys, day,
                            m.item_half_life_days).withColumn("as_of", tr.date_lit(day))
    pop_delta = _kind(night, ITEM_EVENTS).select("item_id", "n")
    pop = tr.decay_merge(stored_pop.join(pop_delta.select("item_id"), "item_id", "left_semi"), pop_delta,
                         ["item_id"], day, m.item_half_life_days).withColumn("as_of", tr.date_lit(day))
    touched = delta.select("from_item").distinct()
    row_counts = _overlay(stored_counts, counts, keys).join(touched, "from_item", "left_semi").select(
        *keys, tr.decayed(F.col("count"), F.col("as_of"), day, m.item_half_life_days).alias("count"))
    popularity = _overlay(stored_pop, pop, ["item_id"]).select(
        "item_id", tr.decayed(F.col("count"), F.col("as_of"), day, m.item_half_life_days).alias("count"))
    successors = tr.item_successors(row_counts, popularity, m.item_smoothing, m.top_n_successors)
    return counts, pop, successors.withColumn("updated_through", tr.date_lit(day))


def stage_night(state: StagedState, night: DataFrame, inp: NightInputs, tot: NightTotals, params: NightParams,
                day: dt.date, m: MigrationConfig) -> None:
    """Stage the night's rows of every migration table, in the old path's order (the commit order)."""
    spark, ds = night.sparkSession, tr.date_lit(day)
    glob = category_rows(night, inp, tot, m)
    state.upsert(CATEGORY_TRANSITIONS, glob.withColumn("updated_through", ds))
    user_counts = _kind(night, USER_TRANSITION).select("user_id", "from_cat", "to_cat", "count")
    state.upsert(USER_TRANSITIONS, tr.shrunk_user_rows(user_counts, glob, m.shrinkage_strength)
                 .withColumn("updated_through", ds))
    counts, pop, successors = item_rows(night, state, day, m)
    state.upsert(ITEM_TRANSITION_COUNTS, counts)
    state.upsert(ITEM_POPULARITY, pop)
    state.replace_groups(ITEM_TRANSITIONS, successors, ("from_item",))
    cells = interest_cells(night, params.a, params.b, m)
    state.upsert(USER_INTEREST, cells.select(
        "user_id", "category", F.col("p_new").alias("p"), F.col("rt_new").alias("recent_count"),
        F.col("lt_new").alias("long_term_count"), ds.alias("as_of")))
    state.upsert(USER_LAST_EVENT, _kind(night, LAST_EVENT).select(*tr.EVENT_COLS))
    state.replace_dates(USER_DRIFT, drift.user_drift(cells, m.drift_smoothing, m.drift_threshold)
                        .withColumn("ds", ds))
    state.replace_dates(DRIFT_PARAMS, spark.createDataFrame(
        [(day, params.a, params.b, params.method, params.log_likelihood, params.log_likelihood_default,
          params.n_events, float(params.n_fit_events), params.n_users)], PARAMS_SCHEMA,
    ).withColumn("finished_at", F.current_timestamp()))


def run_night(state: StagedState, events: DataFrame, item_cats: DataFrame, day: dt.date,
              m: MigrationConfig) -> NightParams:
    """Steps 1-5 for night ``day``: stages its rows in ``state`` and returns its drift parameters."""
    inp = night_preamble(state, item_cats, events, day, m)
    night = materialise(night_pass(state, events, item_cats, inp, day, m))
    tot = night_totals(night, inp, m)
    params = drift_params(night, inp, tot, m)
    stage_night(state, night, inp, tot, params, day, m)
    return params
