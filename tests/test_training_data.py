"""Training sequences: the held-out split and the point-in-time rule for the interest feature."""

from __future__ import annotations

import datetime as dt

from driftrec.training_data import build_sequences

EVENTS = "event_id string, user_id bigint, item_id bigint, event_ts timestamp"
INTEREST = "user_id bigint, category string, p double, as_of date"


def _ts(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, 1, day, hour)


def test_interest_feature_never_holds_the_events_it_predicts(spark):
    # User 1's state was last moved on Jan 3, the day of their held-out event: it has absorbed that event, so
    # neither the valid row (target Jan 3) nor the train row (target Jan 2) may see it.
    # User 2's state dates from Jan 2, before their held-out event on Jan 4: the valid row may use it; their
    # train row (target Jan 2) may not.
    events = spark.createDataFrame(
        [
            ("a1", 1, 10, _ts(1)), ("a2", 1, 11, _ts(2)), ("a3", 1, 12, _ts(3)),
            ("b1", 2, 10, _ts(1)), ("b2", 2, 11, _ts(2)), ("b3", 2, 12, _ts(4)),
        ],
        EVENTS,
    )
    interest = spark.createDataFrame(
        [
            (1, "Drama", 0.7, dt.date(2026, 1, 3)), (1, "Comedy", 0.3, dt.date(2026, 1, 3)),
            (2, "Drama", 0.2, dt.date(2026, 1, 2)), (2, "Comedy", 0.8, dt.date(2026, 1, 2)),
        ],
        INTEREST,
    )
    rows = build_sequences(
        events, dt.date(2026, 1, 4), max_seq_len=5, max_chunks=2, min_valid_events=3, interest=interest
    ).collect()
    got = {(r["user_id"], r["split"]): r for r in rows}
    assert sorted(got) == [(1, "train"), (1, "valid"), (2, "train"), (2, "valid")]
    assert got[(1, "train")]["item_ids"] == [10, 11] and got[(1, "valid")]["item_ids"] == [10, 11, 12]
    for key in ((1, "train"), (1, "valid"), (2, "train")):
        assert got[key]["interest_categories"] == [] and got[key]["interest_p"] == [], key
    valid2 = got[(2, "valid")]
    assert valid2["interest_categories"] == ["Comedy", "Drama"]
    assert [round(p, 6) for p in valid2["interest_p"]] == [0.8, 0.2]


def test_interest_after_the_training_date_is_ignored(spark):
    events = spark.createDataFrame([("a1", 1, 10, _ts(1)), ("a2", 1, 11, _ts(5))], EVENTS)
    interest = spark.createDataFrame([(1, "Drama", 1.0, dt.date(2026, 1, 6))], INTEREST)
    (row,) = build_sequences(
        events, dt.date(2026, 1, 5), max_seq_len=5, max_chunks=2, min_valid_events=3, interest=interest
    ).collect()
    assert row["split"] == "train" and row["item_ids"] == [10, 11]
    assert row["interest_categories"] == []
