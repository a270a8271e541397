"""The synthetic generator's ground truth is what its events actually show (pure numpy/pandas, no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.config import DEFAULT_EVENT_TYPES, SyntheticConfig
from driftrec.synthetic import SyntheticData, SyntheticTruth, generate, main, write_dataset

SMALL = SyntheticConfig(users=300, items=200, categories=6, days=21, events_per_user_day=2.0, seed=11)


@pytest.fixture(scope="module")
def medium() -> SyntheticData:
    # ~120k events: enough within-session pairs per row to pin T to well under 0.05.
    return generate(SyntheticConfig(users=2000, items=500, categories=8, days=30, events_per_user_day=2.0, seed=3))


def _event_categories(data: SyntheticData) -> np.ndarray:
    return data.truth.item_category[data.events["item_id"].to_numpy()]


def test_deterministic_and_seed_sensitive():
    a, b = generate(SMALL), generate(SMALL)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert a.truth.to_json() == b.truth.to_json()
    c = generate(SMALL.model_copy(update={"seed": 12}))
    assert not a.events.equals(c.events)


def test_schema_and_item_contract():
    data = generate(SMALL)
    ev, items = data.events, data.items
    assert list(ev.columns) == ["user_id", "item_id", "event_type", "timestamp", "weight"]
    assert [str(t) for t in ev.dtypes] == ["int64", "int64", "object", "int64", "float64"]
    assert set(ev["event_type"]) <= set(DEFAULT_EVENT_TYPES)
    assert ev.groupby("event_type")["weight"].nunique().eq(1).all()  # one weight per event type
    assert list(items.columns) == ["item_id", "title", "categories", "text"]
    assert items["item_id"].tolist() == list(range(SMALL.items))
    assert ev["item_id"].between(0, SMALL.items - 1).all() and ev["user_id"].between(0, SMALL.users - 1).all()
    names = data.truth.categories
    assert len(set(names)) == SMALL.categories
    # Exactly one category per item, matching the truth, and the text mostly speaks that category's words.
    assert items["categories"].map(len).eq(1).all()
    assert [c[0] for c in items["categories"]] == [names[i] for i in data.truth.item_category]
    assert set(data.truth.item_category.tolist()) == set(range(SMALL.categories))
    # Mean events per user-day is what the config asks for (within sampling noise).
    assert len(ev) / (SMALL.users * SMALL.days) == pytest.approx(SMALL.events_per_user_day, rel=0.05)


def test_transition_rows_are_distributions_with_sticky_diagonal(medium):
    t = medium.truth.category_transition
    assert t.shape == (8, 8)
    assert np.allclose(t.sum(axis=1), 1.0) and (t >= 0).all()
    assert ((np.diag(t) >= 0.5) & (np.diag(t) <= 0.8)).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 20), smin=st.floats(0, 1), smax=st.floats(0, 1))
def test_transition_rows_sum_to_one_for_any_seed(seed, k, smin, smax):
    lo, hi = sorted((smin, smax))
    cfg = SyntheticConfig(users=5, items=k, categories=k, days=1, seed=seed, stickiness_min=lo, stickiness_max=hi)
    t = generate(cfg).truth.category_transition
    assert np.allclose(t.sum(axis=1), 1.0) and (t >= 0).all()
    assert ((np.diag(t) >= lo - 1e-12) & (np.diag(t) <= hi + 1e-12)).all()


def test_within_session_category_transitions_follow_truth(medium):
    ev = medium.events
    cats = _event_categories(medium)
    users, ts = ev["user_id"].to_numpy(), ev["timestamp"].to_numpy()
    # A 3 h gap keeps exactly the within-session pairs (sessions are <= 5 min apart inside, >= 12 h between).
    pair = (users[1:] == users[:-1]) & (np.diff(ts) < 3 * 3600)
    counts = np.zeros((8, 8))
    np.add.at(counts, (cats[:-1][pair], cats[1:][pair]), 1)
    assert counts.sum(axis=1).min() > 2000
    empirical = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(empirical - medium.truth.category_transition).max() < 0.05


def test_planted_successors_are_a_real_signal(medium):
    ev = medium.events
    items, users = ev["item_id"].to_numpy(), ev["user_id"].to_numpy()
    cats = _event_categories(medium)
    pair = (users[1:] == users[:-1]) & (np.diff(ev["timestamp"].to_numpy()) < 3 * 3600)
    succ = medium.truth.item_successors[items[:-1][pair], cats[1:][pair]]  # (pairs, S)
    hit = (succ == items[1:][pair][:, None]).any(axis=1).mean()
    # successor_prob of pairs are planted successors, plus popularity draws that happen to hit one.
    assert hit > medium.truth.successor_prob
    assert (medium.truth.item_category[medium.truth.item_successors] == np.arange(8)[None, :, None]).all()


def test_sessions_inside_daytime_window_and_sorted(medium):
    ev = medium.events
    seconds_of_day = ev["timestamp"].to_numpy() % 86400
    assert (seconds_of_day >= 8 * 3600).all() and (seconds_of_day < 20 * 3600).all()
    users, ts = ev["user_id"].to_numpy(), ev["timestamp"].to_numpy()
    same_user = users[1:] == users[:-1]
    assert (np.diff(users) >= 0).all()
    assert (np.diff(ts)[same_user] > 0).all()  # strictly increasing: (user, timestamp) is unique
    gaps = np.diff(ts)[same_user]
    assert ((gaps <= 300) | (gaps >= 12 * 3600)).all()
    # One session per active day, each with at least two events.
    day = ts // 86400
    assert ev.groupby([users, day]).size().min() >= 2


def test_migrating_users_move_and_stable_users_stay(medium):
    ev, truth = medium.events, medium.truth
    names = {n: i for i, n in enumerate(truth.categories)}
    day = (ev["timestamp"].to_numpy() - ev["timestamp"].min()) // 86400
    frame = pd.DataFrame({"user_id": ev["user_id"], "cat": _event_categories(medium), "day": day})
    first, last = frame[frame["day"] < 7], frame[frame["day"] >= 30 - 7]

    def share(part: pd.DataFrame, users: np.ndarray, cat: np.ndarray) -> np.ndarray:
        hit = part.assign(hit=part["cat"].to_numpy() == cat[part["user_id"].to_numpy()])
        return hit.groupby("user_id")["hit"].mean().reindex(users).to_numpy()

    n_users = len(truth.user_home)
    mig = np.array(truth.migrating_users)
    assert len(mig) == round(0.2 * n_users) and set(mig).isdisjoint(truth.stable_users)
    assert len(mig) + len(truth.stable_users) == n_users
    from_cat = np.zeros(n_users, np.int64)
    to_cat = np.zeros(n_users, np.int64)
    for m in truth.migrating:
        assert m["from_category"] != m["to_category"] and 0 <= m["start_day"] <= m["end_day"] < 30
        from_cat[m["user_id"]], to_cat[m["user_id"]] = names[m["from_category"]], names[m["to_category"]]
    assert (from_cat[mig] == truth.user_home[mig]).all()

    from_drop = share(first, mig, from_cat) - share(last, mig, from_cat)
    to_rise = share(last, mig, to_cat) - share(first, mig, to_cat)
    assert np.nanmean(from_drop) > 0.4 and np.nanmean(to_rise) > 0.4
    assert np.nanmean(to_rise > 0) > 0.9  # per user, not just on average

    stable = np.array(truth.stable_users)
    home_change = share(last, stable, truth.user_home) - share(first, stable, truth.user_home)
    assert abs(np.nanmean(home_change)) < 0.05
    # Home stays the dominant category (sessions drift away along T, so well below home_affinity, far above 1/K).
    assert np.nanmean(share(last, stable, truth.user_home)) > 0.4


def test_truth_json_round_trip():
    truth = generate(SMALL).truth
    back = SyntheticTruth.from_json(truth.to_json())
    assert back.categories == truth.categories and back.migrating == truth.migrating
    assert back.stable_users == truth.stable_users
    np.testing.assert_array_equal(back.category_transition, truth.category_transition)  # exact floats
    np.testing.assert_array_equal(back.item_category, truth.item_category)
    np.testing.assert_array_equal(back.item_successors, truth.item_successors)
    np.testing.assert_array_equal(back.user_home, truth.user_home)


def test_write_dataset_round_trips_and_is_byte_identical(tmp_path):
    info = write_dataset(SMALL, tmp_path / "a")
    write_dataset(SMALL, tmp_path / "b")
    data = generate(SMALL)
    files = sorted((tmp_path / "a" / "events").glob("events-*.parquet"))
    assert [f.name for f in files][:2] == ["events-2026-01-01.parquet", "events-2026-01-02.parquet"]
    assert len(files) == SMALL.days == info["n_days"] and info["n_events"] == len(data.events)
    for f in files:  # each file holds exactly its own UTC day
        day = pd.read_parquet(f)
        assert (pd.to_datetime(day["timestamp"], unit="s").dt.strftime("%Y-%m-%d") == f.stem[7:]).all()
    back = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    back = back.iloc[np.argsort(back["user_id"].to_numpy(), kind="stable")].reset_index(drop=True)
    pd.testing.assert_frame_equal(back, data.events)
    items = pd.read_parquet(info["items"])
    assert items["categories"].map(list).tolist() == data.items["categories"].tolist()
    pd.testing.assert_frame_equal(items.drop(columns="categories"), data.items.drop(columns="categories"))
    assert SyntheticTruth.from_json((tmp_path / "a" / "truth.json").read_text()).to_json() == data.truth.to_json()
    for f in [*files, tmp_path / "a" / "items.parquet", tmp_path / "a" / "truth.json"]:
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()


def test_main_writes_dataset(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--users", "20", "--items", "30", "--days", "3", "--categories", "4",
               "--events-per-user-day", "1.5", "--seed", "5", "--migrating-fraction", "0.5"])
    assert rc == 0 and '"n_events"' in capsys.readouterr().out
    assert len(list((tmp_path / "events").glob("*.parquet"))) == 3
    truth = SyntheticTruth.from_json((tmp_path / "truth.json").read_text())
    assert len(truth.categories) == 4 and len(truth.migrating) == 10


def test_rejects_fewer_items_than_categories():
    with pytest.raises(ValueError, match="at least one item per category"):
        generate(SyntheticConfig(items=3, categories=5))
