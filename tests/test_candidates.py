"""The candidate step's building blocks on hand-made inputs (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from spark_udfs.candidates import (
    Candidates,
    ItemClusters,
    candidate_sets,
    category_top,
    item_clusters,
    nearest_neighbours,
    probe,
    rest_log_mass,
)


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


def test_item_clusters_partition_the_items_and_find_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    v = np.vstack([c + 0.1 * rng.standard_normal((20, 2)) for c in centres])
    got = item_clusters(v, 3, seed=1)
    # Every item in exactly one cluster, members ascending, and each planted group is one cluster.
    assert sorted(got.members.tolist()) == list(range(60)) and got.sizes.sum() == 60
    for c in range(3):
        m = got.members[got.indptr[c] : got.indptr[c + 1]]
        assert (np.diff(m) > 0).all() and (got.assign[m] == c).all()
    groups = [set(got.assign[g * 20 : (g + 1) * 20].tolist()) for g in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set().union(*groups)) == 3
    again = item_clusters(v, 3, seed=1)
    assert (again.assign == got.assign).all() and np.array_equal(again.centroids, got.centroids)


def test_probe_and_rest_mass():
    c = ItemClusters(centroids=np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), assign=np.array([0, 0, 1, 2, 2, 2]),
                     indptr=np.array([0, 2, 3, 6]), members=np.array([0, 1, 2, 3, 4, 5]))
    h = np.array([[2.0, 1.0], [0.0, -1.0]])
    assert probe(c, h, 2).tolist() == [[0, 1], [0, 2]]  # user 1: clusters 0 and 2 tie at 0, ties by index
    n = 6
    cols = np.array([[0, 1, 2, 3, n, n], [0, 1, 2, 3, 4, 5]])
    got = rest_log_mass(c, h, cols, n)
    # User 0 lacks items 4 and 5 of cluster 2: 2 x exp(h . (-1, 0)) = 2 exp(-2). User 1 has the whole catalogue.
    assert got[0] == pytest.approx(np.log(2) - 2.0) and got[1] == -np.inf


def test_candidate_sets_add_the_members_of_probed_clusters():
    c = ItemClusters(centroids=np.zeros((2, 2)), assign=np.array([0, 1, 0, 1]), indptr=np.array([0, 2, 4]),
                     members=np.array([0, 2, 1, 3]))
    cand = Candidates(category_top=np.full((1, 1), -1), neighbours=np.full((4, 1), -1), popular=np.array([3]),
                      categories_per_user=0, clusters=c, probes=1)
    empty = np.zeros(0, np.int64)
    got = candidate_sets(cand, np.zeros((2, 1)), np.zeros((2, 1)), [empty, empty], np.zeros(5, np.int64), empty,
                         rising_margin=0.05, n=4, probed=[np.array([0]), empty])
    assert got.tolist() == [[0, 2, 3], [3, 4, 4]]
