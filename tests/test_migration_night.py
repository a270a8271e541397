"""The one-pass night (driftrec.migration.night): its pandas function against the 1-D kernels (no Spark), and the
rows it stages against those of the night it replaced (``tests/reference_night.py``) on a small lakehouse, night
after night."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from driftrec.migration import kernels, night
from tests.conftest import make_conf

CATS = ["a", "b", "c"]
ARROW = {"string": pa.string(), "long": pa.int64(), "double": pa.float64(), "boolean": pa.bool_()}


def _bucket_rows(rng):
    """Stored state and the night's rows of five users, as the pass hands them to its pandas function.

    10: stored interest, counts and pairs; 20: new, with pairs; 30: stored interest, no counts, no pairs;
    40: stored rows but no evidence (does not move); 50: a sparse stored interest and counts, one new pair key."""
    rows = []

    def add(kind, user, **cols):
        rows.append({"kind": kind, "user_id": user, **cols})

    for u, cats in ((10, CATS), (30, CATS), (40, CATS), (50, ["a", "c"])):
        p = rng.random(len(cats)) + 0.1
        for c, x in zip(cats, p / p.sum(), strict=True):
            add(night.STORED_INTEREST, u, category=c, p=float(x), rt=float(rng.random() * 3),
                lt=float(rng.random() * 9))
    for u, keys in ((10, [("a", "b"), ("b", "b"), ("c", "a")]), (40, [("a", "a")]), (50, [("a", "c")])):
        for f, t in keys:
            add(night.USER_TRANSITION, u, from_cat=f, to_cat=t, count=float(rng.random() * 4))
    for u in (10, 20, 30, 50):
        for c in CATS:
            if rng.random() < 0.7 or c == "b":
                add(night.EVIDENCE, u, category=c, n=float(rng.integers(1, 3)) / 2)
    for u, keys in ((10, [("a", "b"), ("a", "b"), ("b", "c")]), (20, [("b", "a")]), (50, [("b", "c")])):
        for f, t in keys:
            add(night.USER_PAIR, u, from_cat=f, to_cat=t, n=float(rng.random()))
    return pd.DataFrame(rows).assign(bucket=0)


def _dist(rng, *shape):
    x = rng.random(shape) + 1e-3
    return x / x.sum(axis=-1, keepdims=True)


def _one_user(rows: pd.DataFrame, u: int, g, pg, m):
    """The night for user ``u`` with the 1-D kernels, straight from the definitions."""
    mine = rows[rows.user_id == u]
    idx = {c: i for i, c in enumerate(CATS)}
    prev = mine[mine.kind == night.STORED_INTEREST]
    p, rt, lt, n = (np.zeros(3) for _ in range(4))
    counts, seen = np.zeros((3, 3)), set()
    for r in prev.itertuples():
        p[idx[r.category]], rt[idx[r.category]], lt[idx[r.category]] = r.p, r.rt, r.lt
    p = p if len(prev) else g
    for r in mine[mine.kind == night.USER_TRANSITION].itertuples():
        counts[idx[r.from_cat], idx[r.to_cat]] += r.count
        seen.add((r.from_cat, r.to_cat))
    for r in mine[mine.kind == night.EVIDENCE].itertuples():
        n[idx[r.category]] += r.n
    user_p = kernels.shrunk_rows(counts, pg, m.shrinkage_strength)
    after = counts.copy()
    pairs = mine[mine.kind == night.USER_PAIR]
    for r in pairs.itertuples():
        after[idx[r.from_cat], idx[r.to_cat]] += r.n
        seen.add((r.from_cat, r.to_cat))
    new_counts = {key: after[idx[key[0]], idx[key[1]]] for key in seen} if len(pairs) else {}
    return dict(has_prev=len(prev) > 0, p=p, m=kernels.migration_term(p, user_p), n=n, rt_new=rt + n, lt_new=lt + n,
                p_new=kernels.update_interest(p, user_p, g, 0.55, 0.3, n, m.prior_strength)), new_counts


@pytest.mark.parametrize("strength", [0.0, 2.0])
def test_night_bucket_equals_the_one_user_kernels_and_converts_to_its_arrow_schema(strength):
    rng = np.random.default_rng(5)
    m = make_conf(Path("/tmp/unused"), f"migration.shrinkage_strength={strength}").migration
    rows = _bucket_rows(rng)
    g, pg = _dist(rng, 3), _dist(rng, 3, 3)
    fn = night.night_bucket(CATS, g, pg, m)
    out = fn(rows)
    cells = out[out.kind == night.CELL].sort_values(["user_id", "category"])
    assert sorted(set(cells.user_id)) == [10, 20, 30, 50] and list(cells.category[:3]) == CATS
    moved = out[out.kind == night.USER_TRANSITION]
    assert sorted(set(moved.user_id)) == [10, 20, 50]  # users with pairs tonight; 30 had none, 40 did not move
    for u in (10, 20, 30, 50):
        want, want_counts = _one_user(rows, u, g, pg, m)
        got = cells[cells.user_id == u]
        assert got.has_prev.tolist() == [want["has_prev"]] * 3
        for col in ("p", "m", "n", "rt_new", "lt_new"):
            np.testing.assert_allclose(got[col], want[col], rtol=1e-13, atol=1e-15, err_msg=f"{u} {col}")
        np.testing.assert_allclose(got.g, g, rtol=0)
        np.testing.assert_allclose(got.n_user, want["n"].sum(), rtol=1e-15)
        # p_new applied after the pass (posterior_from_total on the cell's columns) is the kernel's update.
        q = kernels.prior_from_terms(got.p.to_numpy(), got.m.to_numpy(), g, 0.55, 0.3)
        p_new = kernels.posterior_from_total(q, got.n.to_numpy(), got.n_user.to_numpy(), m.prior_strength)
        np.testing.assert_allclose(p_new, want["p_new"], rtol=1e-13)
        got_counts = {(r.from_cat, r.to_cat): r.count for r in moved[moved.user_id == u].itertuples()}
        assert got_counts.keys() == want_counts.keys(), u
        for key, value in want_counts.items():
            assert got_counts[key] == pytest.approx(value, rel=1e-14), (u, key)
    # A bucket gives each user what the user alone gets.
    assert fn(rows[rows.user_id == 40]).empty
    alone = pd.concat([fn(rows[rows.user_id == u]) for u in (10, 20, 30, 50)], ignore_index=True)
    key = ["kind", "user_id", "category", "from_cat", "to_cat"]
    pd.testing.assert_frame_equal(out.sort_values(key).reset_index(drop=True),
                                  alone.sort_values(key).reset_index(drop=True), check_dtype=False)
    # Every column converts as pyspark converts a pandas UDF's output (nulls masked), with and without pairs.
    for frame in (out, fn(rows[rows.kind != night.USER_PAIR]), fn(rows[rows.kind == night.STORED_INTEREST])):
        for spec in night.BUCKET_SCHEMA.split(", "):
            name, kind = spec.split()
            converted = pa.Array.from_pandas(frame[name], mask=frame[name].isnull(), type=ARROW[kind], safe=True)
            assert isinstance(converted, pa.Array), (name, type(converted))  # a ChunkedArray fails in Spark


def test_night_bucket_cells_equal_the_old_frame_and_update_functions():
    """The same bucket through the old path's pandas functions (``interest.interest_frame``'s, then
    ``tests/reference_night.updated_interest``'s): equal cells, and ``p_new`` equal once applied at ``(a, b)``."""
    from driftrec.migration import interest
    from tests import reference_night

    rng = np.random.default_rng(8)
    m = make_conf(Path("/tmp/unused"), "migration.shrinkage_strength=2.0").migration
    rows = _bucket_rows(rng)
    g, pg = _dist(rng, 3), _dist(rng, 3, 3)
    out = night.night_bucket(CATS, g, pg, m)(rows)
    cells = out[out.kind == night.CELL].sort_values(["user_id", "category"]).reset_index(drop=True)

    movers = sorted(set(rows.loc[rows.kind == night.EVIDENCE, "user_id"]))
    of = lambda kind: rows[(rows.kind == kind) & rows.user_id.isin(movers)]  # noqa: E731
    old_cells = pd.concat([
        pd.DataFrame({"user_id": movers, "category": None}),
        of(night.STORED_INTEREST)[["user_id", "category", "p", "rt", "lt"]],
        of(night.EVIDENCE)[["user_id", "category", "n"]],
    ], ignore_index=True)
    old_counts = of(night.USER_TRANSITION)[["user_id", "from_cat", "to_cat", "count"]]
    frame = interest._frame_function(CATS, g, pg, m.shrinkage_strength)(old_cells, old_counts)
    frame = frame.sort_values(["user_id", "category"]).reset_index(drop=True)
    assert frame.has_prev.tolist() == cells.has_prev.tolist()
    for new, old in (("p", "p"), ("m", "m"), ("g", "g"), ("n", "n")):
        np.testing.assert_array_equal(cells[new].to_numpy(float), frame[old].to_numpy(float), err_msg=new)
    np.testing.assert_array_equal(cells.rt_new.to_numpy(float), (frame.rt_prev + frame.n).to_numpy(float))
    np.testing.assert_array_equal(cells.lt_new.to_numpy(float), (frame.lt_prev + frame.n).to_numpy(float))
    updated = reference_night._update_function(0.55, 0.3, m.prior_strength)(frame.assign(bucket=0))
    updated = updated.sort_values(["user_id", "category"]).reset_index(drop=True)
    q = kernels.prior_from_terms(cells.p, cells.m, cells.g, 0.55, 0.3)
    p_new = kernels.posterior_from_total(q, cells.n, cells.n_user, m.prior_strength)
    np.testing.assert_allclose(p_new, updated.p_new, rtol=1e-14)


# ---- old path vs new pass on a Delta lakehouse ----------------------------------------------------------------
D = [dt.date(2026, 4, 1) + dt.timedelta(days=i) for i in range(3)]
ITEMS = [(1, "Alien Planet", ["scifi"]), (2, "Warp Drive", ["scifi"]), (3, "Garlic Pasta", ["cooking"]),
         (4, "Sourdough", ["cooking"]), (5, "Space Food", ["scifi", "cooking"]), (6, "Uncategorised", []),
         (7, "Courtroom", ["drama"])]


def _events():
    """D[0]: users 1, 2, 3 (3 crosses midnight into D[1]); D[1]: 1 and 2 again with stored state, 4 new, 3's
    carried pair; D[2]: no events (decay only, the fit is carried)."""
    rows = []
    nights = {0: {1: [1, 2, 5, 3], 2: [3, 4, 3, 6, 1, 7]}, 1: {1: [3, 4, 4, 5, 7], 2: [7, 1, 2], 4: [5, 6, 2]}}
    for d, seqs in nights.items():
        for u, seq in seqs.items():
            rows += [(u, item, f"{D[d]} 10:{k * 5:02d}:00") for k, item in enumerate(seq)]
    rows += [(3, 1, f"{D[0]} 23:50:00"), (3, 3, f"{D[1]} 00:10:00"), (3, 2, f"{D[1]} 09:00:00")]
    return rows


def _rows(df, drop=()):
    return sorted(tuple(r) for r in df.drop(*drop).collect())


@pytest.mark.slow  # ~2.5 min: two whole nights per date, the old one ~20 Spark actions each
def test_night_pass_stages_the_rows_of_the_old_night(spark, tmp_path):
    from driftrec import lakehouse
    from driftrec.categories import item_categories
    from driftrec.migration.state import StagedState, materialise
    from driftrec.tables import (CATEGORY_TRANSITIONS, DRIFT_PARAMS, EVENTS, MIGRATION_STATE_TABLES,
                                 MIGRATION_TABLES, USER_DRIFT)
    from jobs.migrate import VERSIONED, MigrationJob
    from tests.reference_night import OldNight
    from tests.migration_helpers import assert_rows_close, put_events, put_items

    conf = make_conf(tmp_path / "lh", "migration.half_life_days=3.0", "migration.gap_minutes=30",
                     "migration.top_n_successors=3", "migration.min_fit_events=5", "migration.shrinkage_strength=2.0",
                     "migration.fit_grid_step=0.1")
    put_items(spark, conf, ITEMS)
    put_events(spark, conf, _events())
    job, reference = MigrationJob(spark, conf), OldNight(spark, conf)
    lakehouse.ensure_tables(spark, conf, MIGRATION_TABLES)
    methods = []
    for day in D:
        versions = {spec.logical: lakehouse.table_version(spark, conf, spec) for spec in VERSIONED}
        item_cats = materialise(item_categories(spark, conf))
        new_state, old_state = StagedState(spark, conf, versions), StagedState(spark, conf, versions)
        events_version = lakehouse.table_version(spark, conf, EVENTS)
        params = night.run_night(new_state, job._events(day, events_version), item_cats, day, conf.migration)
        report = reference.night(day, old_state, item_cats)
        assert list(new_state._rows) == list(old_state._rows)  # the same tables, staged in the same (commit) order
        for spec in (*MIGRATION_STATE_TABLES, USER_DRIFT, DRIFT_PARAMS):
            drop = ("finished_at",) if spec is DRIFT_PARAMS else ()
            new, old = _rows(new_state._rows[spec.logical], drop), _rows(old_state._rows[spec.logical], drop)
            if day == D[1] or spec in (CATEGORY_TRANSITIONS, DRIFT_PARAMS):  # D[2] moves no user and no item
                assert new, f"{day} {spec.logical}: nothing staged"
            assert_rows_close(new, old, f"{day} {spec.logical}", rel=1e-9)
        assert (params.a, params.b, params.method, params.n_events, params.n_users) == \
            (report.a, report.b, report.method, report.n_events, report.n_users)
        methods.append(report.method)
        old_state.commit(day, day)  # the next night starts from the old path's state
    assert methods == ["default", "fitted", "carried"]


@pytest.mark.parametrize("item_half_life", [None, 14.0])
def test_item_counts_are_plain_sums_by_default_and_decay_with_their_own_half_life(spark, tmp_path, item_half_life):
    """Two nights 400 days apart (~40 s each setting). Default: the pair counts and popularity are the plain sums
    of both nights, so item 1's successor row still ranks its old pair 1 -> 2 (3 + 1 events) far above 1 -> 3 (one
    event); with migration.item_half_life_days=14 the old evidence is 2^(-400/14) of itself and the two tie. The
    category level decays with half_life_days either way; scoring reads popularity with the same setting."""
    from driftrec import lakehouse
    from driftrec.categories import item_categories
    from driftrec.migration.scoring import load_markov_state
    from driftrec.migration.state import StagedState, materialise
    from driftrec.tables import CATEGORY_TRANSITIONS, EVENTS, ITEM_POPULARITY, ITEM_TRANSITION_COUNTS, \
        ITEM_TRANSITIONS, MIGRATION_TABLES
    from jobs.migrate import VERSIONED, MigrationJob
    from tests.migration_helpers import put_events, put_items

    extra = [] if item_half_life is None else [f"migration.item_half_life_days={item_half_life}"]
    conf = make_conf(tmp_path / "lh", "migration.gap_minutes=30", "migration.top_n_successors=3", *extra)
    m = conf.migration
    assert m.item_half_life_days == item_half_life and m.half_life_days == 14.0
    day_a, day_b = dt.date(2024, 1, 10), dt.date(2024, 1, 10) + dt.timedelta(days=400)
    night_a = {u: [1, 2] for u in (1, 2, 3)}  # 1 -> 2 three times
    night_b = {4: [1, 3], 5: [1, 2], 6: [4, 5]}  # 1 -> 3, 1 -> 2 again, 4 -> 5
    rows = [(u, i, f"{d} 10:{k * 5:02d}:00") for d, seqs in ((day_a, night_a), (day_b, night_b))
            for u, seq in seqs.items() for k, i in enumerate(seq)]
    put_items(spark, conf, [(1, "A", ["x"]), (2, "B", ["x"]), (3, "C", ["x"]), (4, "D", ["y"]), (5, "E", ["y"])])
    put_events(spark, conf, rows)
    job = MigrationJob(spark, conf)
    lakehouse.ensure_tables(spark, conf, MIGRATION_TABLES)
    state = StagedState(spark, conf, {spec.logical: lakehouse.table_version(spark, conf, spec) for spec in VERSIONED})
    item_cats, version = materialise(item_categories(spark, conf)), lakehouse.table_version(spark, conf, EVENTS)
    for day in (day_a, day_b):
        night.run_night(state, job._events(day, version), item_cats, day, m)

    w = kernels.decay_factor(400, item_half_life)  # weight of night A's item evidence on night B
    counts = {(r["from_item"], r["to_item"]): (r["count"], r["as_of"])
              for r in state.read(ITEM_TRANSITION_COUNTS).collect()}
    assert counts[(1, 2)][0] == pytest.approx(3 * w + 1, rel=1e-12) and counts[(1, 2)][1] == day_b
    assert counts[(1, 3)] == (1.0, day_b) and counts[(4, 5)] == (1.0, day_b)
    if item_half_life is None:
        assert counts[(1, 2)][0] == 4.0  # the plain sum of both nights' pairs
    pop = {r["item_id"]: r["count"] for r in state.read(ITEM_POPULARITY).collect()}
    want_pop = {1: 3 * w + 2, 2: 3 * w + 1, 3: 1.0, 4: 1.0, 5: 1.0}
    assert pop == pytest.approx(want_pop, rel=1e-12)

    # Item 1's successor row on night B is the kernel's row from those counts and that popularity.
    row = {r["to_item"]: r["prob"] for r in state.read(ITEM_TRANSITIONS).where("from_item = 1").collect()}
    c, p = np.zeros(6), np.zeros(6)
    c[2], c[3] = 3 * w + 1, 1.0
    for i, x in want_pop.items():
        p[i] = x
    idx, probs = kernels.successor_row(c, p, m.item_smoothing, m.top_n_successors, self_index=1)
    assert row == pytest.approx(dict(zip(idx.tolist(), probs.tolist())), rel=1e-9)
    if item_half_life is None:  # the old pair still leads: (4 + 4/6) / 6 against (1 + 1/6) / 6
        assert row[2] == pytest.approx(7 / 9, rel=1e-12) and row[3] == pytest.approx(7 / 36, rel=1e-12)
    else:  # night A's three pairs are gone: 1 -> 2 and 1 -> 3 are one pair each, the prior decides
        assert abs(row[2] - row[3]) < 1e-6
    # The category level decays with half_life_days whatever the item setting: night A's 3 x->x pairs are ~0.
    glob = {(r["from_cat"], r["to_cat"]): r["count"] for r in state.read(CATEGORY_TRANSITIONS).collect()}
    assert glob[("x", "x")] == pytest.approx(3 * 2.0 ** (-400 / 14) + 2, rel=1e-9)

    # Scoring brings popularity forward with the same setting (here 100 days after night B).
    state.commit(day_a, day_b)
    later = day_b + dt.timedelta(days=100)
    scored = {r["item_id"]: r["count"] for r in load_markov_state(spark, conf, later).item_popularity.collect()}
    assert scored == pytest.approx({i: x * kernels.decay_factor(100, item_half_life) for i, x in want_pop.items()},
                                   rel=1e-12)
