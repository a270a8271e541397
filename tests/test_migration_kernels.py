"""The numpy kernels: the worked example and Hypothesis properties (rows sum to 1, updates stay distributions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from driftrec.migration import kernels as k

K = st.integers(min_value=1, max_value=6)
finite = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def counts(n: int):
    return arrays(np.float64, (n, n), elements=finite)


def distribution(draw, n: int) -> np.ndarray:
    x = draw(arrays(np.float64, n, elements=st.floats(0.0, 1.0)))
    if x.sum() == 0:
        x[0] = 1.0
    return x / x.sum()


def test_worked_example_migration_term():
    p = np.array([0.6, 0.4, 0.0])  # A, B, C
    transition = np.array([[0.7, 0.0, 0.3], [0.3, 0.0, 0.7], [0.0, 0.0, 1.0]])
    assert k.migration_term(p, transition)[2] == pytest.approx(0.46, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_smoothed_and_shrunk_rows_sum_to_one(data):
    n = data.draw(K)
    c = data.draw(counts(n))
    alpha = data.draw(st.floats(1e-6, 10.0))
    glob = k.smoothed_rows(c, alpha)
    np.testing.assert_allclose(glob.sum(axis=1), 1.0, rtol=1e-12)
    assert (glob > 0).all()
    user = data.draw(counts(n))
    strength = data.draw(st.floats(0.0, 50.0))
    np.testing.assert_allclose(k.shrunk_rows(user, glob, strength).sum(axis=1), 1.0, rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_interest_update_keeps_a_distribution(data):
    n = data.draw(K)
    p = distribution(data.draw, n)
    g = distribution(data.draw, n)
    transition = k.smoothed_rows(data.draw(counts(n)), 0.1)
    a = data.draw(st.floats(0.0, 1.0))
    b = data.draw(st.floats(0.0, 1.0 - a))
    evidence = data.draw(arrays(np.float64, n, elements=st.floats(0.0, 100.0)))
    strength = data.draw(st.floats(0.01, 100.0))
    new = k.update_interest(p, transition, g, a, b, evidence, strength)
    assert (new >= -1e-15).all()
    assert new.sum() == pytest.approx(1.0, abs=1e-9)
    js = k.js_divergence(p, new)
    assert -1e-12 <= js <= 1.0 + 1e-12


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decay_with_zero_days_is_identity_and_composes(data):
    n = data.draw(K)
    c = data.draw(counts(n))
    half_life = data.draw(st.floats(0.1, 1000.0))
    np.testing.assert_array_equal(k.decay(c, 0, half_life), c)
    d1, d2 = data.draw(st.integers(0, 400)), data.draw(st.integers(0, 400))
    np.testing.assert_allclose(
        k.decay(k.decay(c, d1, half_life), d2, half_life), k.decay(c, d1 + d2, half_life), rtol=1e-12
    )


def test_item_level_counts_keep_their_evidence_without_a_half_life_and_decay_with_one():
    """migration.item_half_life_days: None (the default) keeps a pair seen 400 days ago at its full count, so its
    successor row still ranks it first; 14 days leaves it 2^(-400/14) of itself and the row is the prior's."""
    from pathlib import Path

    from driftrec.config import ConfigError
    from tests.conftest import make_conf

    m = make_conf(Path("/tmp/unused")).migration
    assert m.item_half_life_days is None and m.half_life_days == 14.0  # the category level still decays
    with pytest.raises(ConfigError, match="item_half_life_days"):
        make_conf(Path("/tmp/unused"), "migration.item_half_life_days=0")

    old = np.array([0.0, 3.0, 0.0, 0.0])  # source 0: pair 0 -> 1 seen three times 400 days ago
    new = np.array([0.0, 0.0, 1.0, 0.0])  # pair 0 -> 2 seen once today
    assert k.decay_factor(400, None) == 1.0
    np.testing.assert_array_equal(k.decay(old, 400, None), old)
    np.testing.assert_array_equal(k.decayed_update(old, 400, None, new), [0.0, 3.0, 1.0, 0.0])
    np.testing.assert_array_equal(k.decay(np.stack([old, new]), np.array([400.0, 0.0]), None), [old, new])
    assert k.decayed_update(old, 400, 14.0, new)[1] == pytest.approx(3.0 * 2.0 ** (-400 / 14), rel=1e-12)
    assert k.decayed_update(old, 400, 14.0, new)[1] < 1e-8
    np.testing.assert_allclose(k.decay(np.stack([old, new]), np.array([400.0, 14.0]), 14.0),
                               [old * 2.0 ** (-400 / 14), new / 2], rtol=1e-12)

    pop = np.array([4.0, 3.0, 1.0, 2.0])
    plain = k.decayed_update(old, 400, None, new)
    idx, probs = k.successor_row(plain, pop, 1.0, 3, self_index=0)
    assert list(idx) == [1, 2, 3]  # raw (3 + 3/6, 1 + 1/6, 2/6) / 5
    np.testing.assert_allclose(probs, [3.5 / 5, (7 / 6) / 5, (2 / 6) / 5], rtol=1e-12)
    idx, probs = k.successor_row(k.decayed_update(old, 400, 14.0, new), pop, 1.0, 3, self_index=0)
    assert list(idx) == [2, 1, 3] and probs[1] == pytest.approx(0.25, rel=1e-6)  # 1 -> ~(0 + 3/6) / 2


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_successor_rows_sum_to_one_and_never_give_a_single_pair_probability_one(data):
    n = data.draw(st.integers(3, 12))
    row = data.draw(arrays(np.float64, n, elements=st.floats(0.0, 50.0)))
    row[0] = 0.0  # item 0 is the source: no self-transitions
    pop = data.draw(arrays(np.float64, n, elements=st.floats(0.0, 100.0)))
    pop[1:3] += 1.0  # at least two popular items besides the source
    top_n = data.draw(st.integers(2, n))
    idx, probs = k.successor_row(row, pop, 1.0, top_n, self_index=0)
    assert len(idx) <= top_n and 0 not in idx
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    if row.sum() > 0:
        assert probs.max() < 1.0
