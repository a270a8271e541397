"""The plain first-order item Markov chain baseline (``markov_item``): hand-computed rankings from the numpy core,
its exact top-k against a brute-force sort, the Spark baseline on the same tiny events, and the report's best peer
and ratios to it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from driftrec.evaluation import markov
from driftrec.evaluation.report import peer_table, versus_best_peer

# Each user's items in time order. User 8's two events share a timestamp: the event id orders them ("a" = item 7
# first, then item 3), so 8's last item is 3 and the pair is 7 -> 3.
HISTORIES = {1: [1, 2, 3], 2: [1, 2, 4], 3: [1, 3, 2, 5], 4: [6, 2, 3], 5: [7, 1], 6: [5, 7], 7: [6, 2]}
# Pairs: 1->2 x2 (users 1, 2), 1->3, 2->3 x2 (1, 4), 2->4, 2->5, 3->2, 5->7, 6->2 x2 (4, 7), 7->1, 7->3 (user 8).
PAIRS = {(1, 2): 2, (1, 3): 1, (2, 3): 2, (2, 4): 1, (2, 5): 1, (3, 2): 1, (5, 7): 1, (6, 2): 2, (7, 1): 1, (7, 3): 1}
# Popularity (events): 2:5, 1:4, 3:4, 7:3, 5:2, 6:2, 4:1 -> order 2, 1, 3, 7, 5, 6, 4 (ties by item id).
POPULARITY_ORDER = [2, 1, 3, 7, 5, 6, 4]
# Top 4 for each user, by P(i | last item), ties and the rest by popularity then item id, own history excluded:
EXPECTED = {
    7: ([3, 5, 4, 1], [0.5, 0.25, 0.25, 0.0]),  # last 2: 3 .5, 4 .25, 5 .25 (5 before 4: more popular), then 1
    2: ([3, 7, 5, 6], [0.0] * 4),  # last 4 has no successors: popularity minus {1, 2, 4}; 5, 6 tie on 2 events
    5: ([2, 3, 5, 6], [2 / 3, 1 / 3, 0.0, 0.0]),  # last 1: 2 (2/3), 3 (1/3)
    8: ([2, 1, 5, 6], [1.0, 0.0, 0.0, 0.0]),  # last 3 (event id breaks the timestamp tie): 3 -> 2 only
    6: ([1, 3, 2, 6], [0.5, 0.5, 0.0, 0.0]),  # last 7: 1 and 3 at .5, both 4 events: item id decides
    99: ([2, 1, 3, 7], [0.0] * 4),  # no history: popularity
}


def _events() -> pd.DataFrame:
    rows = [(u, item, 100 * pos, f"e{u}-{pos}") for u, items in HISTORIES.items() for pos, item in enumerate(items)]
    rows += [(8, 3, 10, "b"), (8, 7, 10, "a")]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "event_id"])
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # input order must not matter


def _users(events: pd.DataFrame, ids) -> pd.DataFrame:
    ordered = events.sort_values(["user_id", "event_ts", "event_id"])
    last = ordered.groupby("user_id")["item_id"].last()
    seen = ordered.groupby("user_id")["item_id"].agg(lambda s: sorted(set(s)))
    return pd.DataFrame({"user_id": list(ids), "last_item": [last.get(u) for u in ids],
                         "consumed": [seen.get(u) for u in ids]})


def test_transition_counts_and_chain_match_hand_counts():
    events = _events()
    counts = markov.transition_counts(events)
    assert {(r.prev_item, r.item_id): r.count for r in counts.itertuples()} == PAIRS
    model = markov.fit(events)
    assert list(model.item_ids) == POPULARITY_ORDER
    assert list(model.popularity) == [5, 4, 4, 3, 2, 2, 1]
    col = {item: c for c, item in enumerate(model.item_ids)}
    row2 = slice(model.indptr[col[2]], model.indptr[col[2] + 1])
    got = dict(zip(model.item_ids[model.indices[row2]], model.probs[row2]))
    assert got == {3: 0.5, 4: 0.25, 5: 0.25}
    assert model.indptr[col[4] + 1] == model.indptr[col[4]]  # item 4 never has a successor
    for j in range(len(model.item_ids)):
        seg = model.probs[model.indptr[j] : model.indptr[j + 1]]
        assert len(seg) == 0 or seg.sum() == pytest.approx(1.0)


def test_recommendations_match_hand_computed_rankings():
    events = _events()
    model = markov.fit(events)
    recs = markov.recommend(model, _users(events, list(EXPECTED)), 4)
    for user, (items, scores) in EXPECTED.items():
        g = recs[recs["user_id"] == user].sort_values("rank")
        assert list(g["rank"]) == [1, 2, 3, 4], user
        assert list(g["item_id"]) == items, user
        assert g["score"].to_numpy() == pytest.approx(scores), user


def test_fewer_unseen_items_than_k_gives_what_is_left():
    events = _events()
    model = markov.fit(events)
    # User 3 saw 1, 3, 2, 5 (last 5 -> 7): only 7, 6, 4 are unseen, in that order (7 by transition, then popularity).
    recs = markov.recommend(model, _users(events, [3]), 10)
    assert list(recs["item_id"]) == [7, 6, 4]
    assert list(recs["rank"]) == [1, 2, 3]
    assert list(recs["score"]) == [1.0, 0.0, 0.0]


def test_users_are_scored_in_blocks_with_the_same_result(monkeypatch):
    events = _events()
    model = markov.fit(events)
    users = _users(events, list(EXPECTED))
    whole = markov.recommend(model, users, 4)
    monkeypatch.setattr(markov, "CELLS_PER_BLOCK", 2 * len(model.item_ids))  # two users per block
    pd.testing.assert_frame_equal(markov.recommend(model, users, 4), whole)


def test_top_k_by_column_matches_a_full_sort():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0, :] = -np.inf
    for k in (1, 5, 30, 40):
        cols, vals = markov.top_k_by_column(scores, k)
        for u, row in enumerate(scores):
            order = np.lexsort((np.arange(len(row)), -row))[: min(k, len(row))]
            assert list(cols[u]) == list(order), (k, u)
            assert np.array_equal(vals[u], row[order]), (k, u)


def test_spark_baseline_matches_the_hand_computed_rankings(spark):
    from driftrec.evaluation.baselines import item_transitions, markov_item_recommendations

    events = _events()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    train = spark.createDataFrame(
        [(int(r.user_id), int(r.item_id), start + dt.timedelta(seconds=int(r.event_ts)), r.event_id)
         for r in events.itertuples()],
        "user_id bigint, item_id bigint, event_ts timestamp, event_id string",
    )
    pairs = {(r["prev_item"], r["item_id"]): r["count"] for r in item_transitions(train).collect()}
    assert pairs == PAIRS
    users = spark.createDataFrame([(u,) for u in EXPECTED], "user_id bigint")
    got = markov_item_recommendations(train, users, 4).toPandas()
    assert sorted(got["user_id"].unique()) == sorted(EXPECTED)
    for user, (items, scores) in EXPECTED.items():
        g = got[got["user_id"] == user].sort_values("rank")
        assert list(g["rank"]) == [1, 2, 3, 4], user
        assert list(g["item_id"]) == items, user
        assert g["score"].to_numpy() == pytest.approx(scores), user


def test_best_peer_and_ratios_per_protocol_segment_metric_and_k():
    values = {  # (protocol, segment, metric) -> system -> value, at k = 10
        ("leave_one_out", "all", "ndcg"): {"popular_all_time": 0.02, "als": 0.03, "markov_item": 0.05,
                                           "sasrec_random": 0.04, "pipeline": 0.06, "migration": 0.01},
        ("temporal", "all", "ndcg"): {"popular_all_time": 0.0, "als": 0.2, "markov_item": 0.1, "sasrec_random": 0.2,
                                      "pipeline": 0.1, "migration": 0.3},  # als and sasrec_random tie: name decides
        ("temporal", "stable", "hr"): {"popular_recent": 0.0, "markov_item": 0.0, "pipeline": 0.5},  # best is 0
    }
    rows = [{"protocol": p, "segment": seg, "k": 10, "metric": m, "system": s, "value": v, "users": 7}
            for (p, seg, m), systems in values.items() for s, v in systems.items()]
    rows.append({"protocol": "temporal", "segment": "all", "k": 10, "metric": "coverage", "system": "pipeline",
                 "value": 0.9, "users": 80})  # coverage is not compared
    versus = versus_best_peer(pd.DataFrame(rows))
    got = {(r.protocol, r.segment, r.metric, r.system): (r.best_peer, r.best_value, r.ratio)
           for r in versus.itertuples()}
    assert set(got) == {("leave_one_out", "all", "ndcg", "migration"), ("leave_one_out", "all", "ndcg", "pipeline"),
                        ("temporal", "all", "ndcg", "migration"), ("temporal", "all", "ndcg", "pipeline"),
                        ("temporal", "stable", "hr", "pipeline")}
    assert got[("leave_one_out", "all", "ndcg", "pipeline")] == ("markov_item", 0.05, pytest.approx(1.2))
    assert got[("leave_one_out", "all", "ndcg", "migration")] == ("markov_item", 0.05, pytest.approx(0.2))
    assert got[("temporal", "all", "ndcg", "migration")] == ("als", 0.2, pytest.approx(1.5))
    assert got[("temporal", "all", "ndcg", "pipeline")] == ("als", 0.2, pytest.approx(0.5))
    best, value, ratio = got[("temporal", "stable", "hr", "pipeline")]
    assert (best, value) == ("markov_item", 0.0) and np.isnan(ratio)

    wide = peer_table(versus)
    assert list(wide.columns) == ["best_peer", "best_value", "migration / best", "pipeline / best"]
    assert wide.loc[("leave_one_out", "all", 10, "ndcg"), "pipeline / best"] == pytest.approx(1.2)
    assert np.isnan(wide.loc[("temporal", "stable", 10, "hr"), "migration / best"])  # not in that segment
