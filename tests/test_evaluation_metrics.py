"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from driftrec.evaluation.metrics import coverage, per_user, summarise


def _recs(spark, rows):
    return spark.createDataFrame(rows, "user_id bigint, rank int, item_id bigint")


def _truth(spark, rows):
    return spark.createDataFrame(rows, "user_id bigint, item_id bigint")


def test_metrics_match_hand_computed_values(spark):
    recs = _recs(spark, [
        (1, 1, 10), (1, 2, 11), (1, 3, 12),  # user 1: relevant {11, 12, 99}: hits at ranks 2 and 3
        (2, 1, 20), (2, 2, 21), (2, 3, 22),  # user 2: relevant {20}: hit at rank 1
        (3, 1, 30), (3, 2, 31), (3, 3, 32),  # user 3: relevant {33}: no hit
    ])
    truth = _truth(spark, [(1, 11), (1, 12), (1, 99), (2, 20), (3, 33), (4, 40)])  # user 4: no recommendations
    got = {(r["user_id"], r["k"]): r for r in per_user(recs, truth, (2, 3)).collect()}
    assert len(got) == 8  # every truth user at every cut-off
    u1 = got[(1, 3)]
    assert u1["hr"] == 1.0 and u1["recall"] == pytest.approx(2 / 3) and u1["mrr"] == pytest.approx(0.5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert u1["ndcg"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)
    u1k2 = got[(1, 2)]  # only the rank-2 hit counts; the ideal list has 2 hits
    assert u1k2["recall"] == pytest.approx(1 / 3)
    assert u1k2["ndcg"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert got[(2, 2)]["ndcg"] == 1.0 and got[(2, 2)]["mrr"] == 1.0
    assert all(got[(u, k)][m] == 0.0 for u in (3, 4) for k in (2, 3) for m in ("hr", "recall", "ndcg", "mrr"))

    groups = spark.createDataFrame([(1, "migrating"), (2, "stable"), (3, "stable")], "user_id bigint, segment string")
    s = {(r["segment"], r["k"], r["metric"]): (r["value"], r["users"]) for r in summarise(per_user(recs, truth, (3,)),
                                                                                          groups).collect()}
    assert s[("all", 3, "hr")] == (pytest.approx(0.5), 4)
    assert s[("stable", 3, "mrr")] == (pytest.approx(0.5), 2)
    assert s[("migrating", 3, "recall")] == (pytest.approx(2 / 3), 1)
    assert coverage(recs, 100, (1, 3)) == {1: 0.03, 3: 0.09}


def test_splits_hold_out_the_right_events(spark):
    import datetime as dt

    from driftrec.evaluation.protocols import leave_one_out, leave_one_out_for_validation, temporal

    d = dt.date(2026, 1, 1)
    rows = [(f"e{u}{i}", u, 100 * u + i, dt.datetime(2026, 1, 1 + i), d + dt.timedelta(days=i))
            for u, n in ((1, 5), (2, 2)) for i in range(n)]
    rows.append(("e1x", 1, 101, dt.datetime(2026, 1, 9), d + dt.timedelta(days=8)))  # user 1 re-watches item 101
    ev = spark.createDataFrame(rows, "event_id string, user_id bigint, item_id bigint, event_ts timestamp, "
                                     "event_date date")
    loo = leave_one_out(ev)
    assert sorted(map(tuple, loo.truth.collect())) == [(1, 101)]  # user 1's last event; user 2 has too few
    assert sorted(map(tuple, loo.valid.collect())) == [(1, 104)]
    # The test run sees the validation event as history; tuning sees neither held-out event.
    assert sorted(r["event_id"] for r in loo.train.collect()) == ["e10", "e11", "e12", "e13", "e14", "e20", "e21"]
    tune = leave_one_out_for_validation(ev)
    assert sorted(r["event_id"] for r in tune.train.collect()) == ["e10", "e11", "e12", "e13", "e20", "e21"]
    assert sorted(map(tuple, tune.truth.collect())) == [(1, 104)]

    t = temporal(ev, d + dt.timedelta(days=2), horizon_days=3, next_items=None)
    assert t.train.agg({"event_date": "max"}).first()[0] == d + dt.timedelta(days=2)
    # Days 3..5 are the truth window: user 1's items 103, 104 (101 was already seen, and day 8 is past the window).
    assert sorted(map(tuple, t.truth.collect())) == [(1, 103), (1, 104)]
    # The default: each user's next new item, however far after the cutoff.
    nxt = temporal(ev, d + dt.timedelta(days=2))
    assert sorted(map(tuple, nxt.truth.collect())) == [(1, 103)]
    two = temporal(ev, d + dt.timedelta(days=2), next_items=2)
    assert sorted(map(tuple, two.truth.collect())) == [(1, 103), (1, 104)]
    # User 2 (items 200, 201 on days 0, 1) has nothing after day 1; user 1's next new item after day 3 is 104.
    assert sorted(map(tuple, temporal(ev, d + dt.timedelta(days=3)).truth.collect())) == [(1, 104)]
    with pytest.raises(ValueError, match="next_items"):
        temporal(ev, d, next_items=0)

    # Settings are chosen without the test events: leave-one-out's validation split as above; the temporal one is
    # `driftrec tune` on the night of the cutoff (days 0..3 here): user 1's latest event before it is the truth.
    from driftrec.evaluation.protocols import tuning_split

    cut = temporal(ev, d + dt.timedelta(days=3))
    vt = tuning_split("temporal", ev, cut.train)
    assert sorted(map(tuple, vt.truth.collect())) == [(1, 103)]
    assert sorted(r["event_id"] for r in vt.train.collect()) == ["e10", "e11", "e12", "e20", "e21"]
    vl = tuning_split("leave_one_out", ev, loo.train)
    assert sorted(map(tuple, vl.truth.collect())) == [(1, 104)]
    assert sorted(r["event_id"] for r in vl.train.collect()) == ["e10", "e11", "e12", "e13", "e20", "e21"]
    with pytest.raises(ValueError, match="protocol"):
        tuning_split("random", ev, ev)


def test_quantile_cutoff_is_the_last_day_within_that_share_of_events(spark):
    import datetime as dt

    from driftrec.evaluation.protocols import quantile_cutoff, temporal

    # 100 users with one event on each of days 0..9 (1,000 events, 100 a day).
    d = dt.date(2026, 3, 1)
    rows = [(f"e{u}-{i}", u, 1000 * u + i, dt.datetime(2026, 3, 1 + i, 12), d + dt.timedelta(days=i))
            for u in range(100) for i in range(10)]
    ev = spark.createDataFrame(rows, "event_id string, user_id bigint, item_id bigint, event_ts timestamp, "
                                     "event_date date")
    cutoff = quantile_cutoff(ev, 0.9)
    assert cutoff == d + dt.timedelta(days=8)  # 90% of the events fall on days 0..8
    assert quantile_cutoff(ev, 0.5) == d + dt.timedelta(days=4)
    split = temporal(ev, cutoff)
    assert split.truth.count() == 100 and split.truth.select("user_id").distinct().count() == 100
    assert sorted(r["item_id"] for r in split.truth.collect())[:2] == [9, 1009]  # each user's day-9 item
    assert quantile_cutoff(ev, 0.05) == d  # even the first day holds more: the first day
    with pytest.raises(ValueError, match="quantile"):
        quantile_cutoff(ev, 1.0)
