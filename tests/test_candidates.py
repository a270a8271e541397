"""The candidate step's building blocks on hand-made inputs (no Spark)."""

from __future__ import annotations

import numpy as np

from spark_udfs.candidates import Candidates, candidate_sets, category_top, nearest_neighbours


def test_category_top_orders_by_probability_and_drops_absent_items():
    pic = np.array([[0.1, 0.0, 0.6, 0.3], [0.0, 0.5, 0.0, 0.5]])
    got = category_top(pic, 3)
    assert got.tolist() == [[2, 3, 0], [1, 3, -1]]  # ties by index; an item outside the category is -1


def test_nearest_neighbours_are_by_cosine_and_exclude_the_item_itself():
    v = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    got = nearest_neighbours(v, 2, block=2)  # blocks smaller than n: the self-mask must use the block offset
    assert got[:, 0].tolist() == [1, 0, 3, 2, 2]
    assert all(i not in row for i, row in enumerate(got))


def test_candidate_sets_union_every_source():
    n = 10
    cand = Candidates(
        category_top=np.array([[0, 1, -1], [2, 3, 4]]),
        neighbours=np.array([[5], [6], [7], [8], [9], [0], [1], [2], [3], [4]]),
        popular=np.array([9]),
        categories_per_user=1,
    )
    indptr = np.array([0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2])[: n + 1]  # item 7 has successors 1 and 6
    indices = np.array([1, 6])
    q = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 0.0]])
    rise = np.array([[0.0, 0.3], [0.0, 0.0], [0.0, 0.0]])
    recent = [np.array([7]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    got = candidate_sets(cand, q, rise, recent, indptr, indices, rising_margin=0.05, n=n)
    # user 0: popular 9; strongest category 0 (0, 1) and rising category 1 (2, 3, 4); successors of 7 (1, 6);
    # neighbour of 7 (2).
    assert [int(x) for x in got[0] if x < n] == [0, 1, 2, 3, 4, 6, 9]
    assert [int(x) for x in got[1] if x < n] == [2, 3, 4, 9]  # no history: category 1 and popular
    assert [int(x) for x in got[2] if x < n] == [9]  # nothing known: the popularity floor
    assert got.shape[1] == 7 and (got[1:, 4:] == n).all() and (np.diff(got, axis=1) >= 0).all()
