"""The batched kernels (numpy only): a batch of users equals a loop over single users; outputs stay distributions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.migration import kernels as k

HALF_LIVES = dict(half_life_days=7.0, recent_half_life_days=3.0, baseline_half_life_days=60.0)


def _dist(rng, *shape):
    x = rng.random(shape) + 1e-3
    return x / x.sum(axis=-1, keepdims=True)


def _history(rng, n_users: int, n_cats: int):
    """Random user-days sorted by user then day, and category transitions arriving on some of them."""
    lengths = rng.integers(1, 6, n_users)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    days = np.concatenate([np.cumsum(rng.integers(0, 9, n)) for n in lengths]).astype(float)
    evidence = rng.integers(0, 4, (starts[-1], n_cats)).astype(float)
    n_pairs = int(rng.integers(0, 3 * starts[-1] + 1))
    pairs = (rng.integers(0, starts[-1], n_pairs), rng.integers(0, n_cats, n_pairs),
             rng.integers(0, n_cats, n_pairs), rng.random(n_pairs) * 3)
    return starts, days, evidence, pairs


def _one_user_loop(days, evidence, pairs, g, pg, a, b, s, kappa):
    """The recurrence as the engine defines it, one user and one day at a time with the 1-D kernels."""
    kk = len(g)
    p, counts, rt, lt = g.copy(), np.zeros((kk, kk)), np.zeros(kk), np.zeros(kk)
    rows = []
    for t, day in enumerate(days):
        gap = 0.0 if t == 0 else day - days[t - 1]
        counts = k.decay(counts, gap, HALF_LIVES["half_life_days"])
        rt, lt = k.decay(rt, gap, HALF_LIVES["recent_half_life_days"]), k.decay(lt, gap, 60.0)
        user_p = k.shrunk_rows(counts, pg, s)
        m = k.migration_term(p, user_p)
        p_new = k.update_interest(p, user_p, g, a, b, evidence[t], kappa)
        rt, lt = rt + evidence[t], lt + evidence[t]
        rows.append((p, m, p_new, rt, lt))
        p = p_new
        for r, f, to, n in zip(*pairs, strict=True):
            if r == t:
                counts[f, to] += n
    return [np.array(x) for x in zip(*rows, strict=True)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_users=st.integers(1, 7), n_cats=st.integers(1, 5),
       s=st.sampled_from([0.0, 2.0]))
def test_batched_recurrence_equals_the_per_user_loop_and_stays_a_distribution(seed, n_users, n_cats, s):
    rng = np.random.default_rng(seed)
    starts, days, evidence, pairs = _history(rng, n_users, n_cats)
    g, pg = _dist(rng, n_cats), _dist(rng, n_cats, n_cats)
    a, b, kappa = 0.5, 0.3, 4.0
    got = k.interest_recurrence(starts, days, evidence, pairs, g, pg, a, b, **HALF_LIVES,
                                shrinkage_strength=s, prior_strength=kappa)
    np.testing.assert_allclose(got["p_new"].sum(axis=1), 1.0, atol=1e-12)
    assert (got["p_new"] >= 0).all()
    for u in range(n_users):
        lo, hi = starts[u], starts[u + 1]
        sel = (pairs[0] >= lo) & (pairs[0] < hi)
        one = (pairs[0][sel] - lo, pairs[1][sel], pairs[2][sel], pairs[3][sel])
        want = _one_user_loop(days[lo:hi], evidence[lo:hi], one, g, pg, a, b, s, kappa)
        for name, w in zip(("p", "m", "p_new", "rt", "lt"), want, strict=True):
            np.testing.assert_allclose(got[name][lo:hi], w, rtol=1e-12, atol=1e-14, err_msg=name)


def _sub_batch(starts, pairs, lo, hi):
    """Rows ``lo[u]:hi[u]`` of each user as a batch of their own: its ``starts``, the rows taken, remapped pairs."""
    sub_starts = np.concatenate([[0], np.cumsum(hi - lo)])
    taken = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)]).astype(np.int64)
    new_row = np.full(starts[-1], -1)
    new_row[taken] = np.arange(len(taken))
    keep = new_row[pairs[0]] >= 0
    return sub_starts, taken, (new_row[pairs[0][keep]], pairs[1][keep], pairs[2][keep], pairs[3][keep])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_users=st.integers(1, 7), n_cats=st.integers(1, 5),
       s=st.sampled_from([0.0, 2.0]))
def test_recurrence_split_at_any_day_and_resumed_from_the_decayed_state_equals_one_pass(seed, n_users, n_cats, s):
    """Days 1..n in one call equal days 1..k, then k+1..n from the state after day k decayed to day k+1 (what a
    night does with the stored state). k is drawn per user in 0..n: k = 0 resumes from the default start; k = n
    leaves the user no later rows, and the second call must hand that user's state back untouched."""
    rng = np.random.default_rng(seed)
    starts, days, evidence, pairs = _history(rng, n_users, n_cats)
    g, pg = _dist(rng, n_cats), _dist(rng, n_cats, n_cats)
    kw = dict(**HALF_LIVES, shrinkage_strength=s, prior_strength=4.0)
    whole = k.interest_recurrence(starts, days, evidence, pairs, g, pg, 0.5, 0.3, **kw)
    lo, hi = starts[:-1], starts[1:]
    split = lo + rng.integers(0, hi - lo + 1)

    s1, rows1, pairs1 = _sub_batch(starts, pairs, lo, split)
    first = k.interest_recurrence(s1, days[rows1], evidence[rows1], pairs1, g, pg, 0.5, 0.3, **kw)
    ran = split > lo
    end = s1[1:][ran] - 1  # the last row in the first call of each user who had one
    state = {"p": np.tile(g, (n_users, 1)), "counts": first["counts"], "rt": np.zeros((n_users, n_cats)),
             "lt": np.zeros((n_users, n_cats))}
    state["p"][ran], state["rt"][ran], state["lt"][ran] = first["p_new"][end], first["rt"][end], first["lt"][end]
    resumes = ran & (split < hi)
    gap = np.where(resumes, days[np.minimum(split, len(days) - 1)] - days[np.maximum(split - 1, 0)], 0.0)
    initial = {"p": state["p"], "counts": k.decay(state["counts"], gap, HALF_LIVES["half_life_days"]),
               "rt": k.decay(state["rt"], gap, HALF_LIVES["recent_half_life_days"]),
               "lt": k.decay(state["lt"], gap, HALF_LIVES["baseline_half_life_days"])}
    s2, rows2, pairs2 = _sub_batch(starts, pairs, split, hi)
    second = k.interest_recurrence(s2, days[rows2], evidence[rows2], pairs2, g, pg, 0.5, 0.3, **kw, initial=initial)

    for name in ("p", "m", "p_new", "rt", "lt"):
        np.testing.assert_allclose(first[name], whole[name][rows1], rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(second[name], whole[name][rows2], rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(second["counts"], whole["counts"], rtol=1e-12, atol=1e-14)
    done = split == hi  # no later rows: the state passes through unchanged, as of the user's last day
    np.testing.assert_array_equal(second["counts"][done], initial["counts"][done])
    for u in np.flatnonzero(hi > lo):  # the final counts, summed in closed form from the user's own pairs
        sel = (pairs[0] >= lo[u]) & (pairs[0] < hi[u])
        want = np.zeros((n_cats, n_cats))
        age = days[hi[u] - 1] - days[pairs[0][sel]]
        np.add.at(want, (pairs[1][sel], pairs[2][sel]), pairs[3][sel] * 2.0 ** (-age / HALF_LIVES["half_life_days"]))
        np.testing.assert_allclose(whole["counts"][u], want, rtol=1e-12, atol=1e-14)


def test_recurrence_from_the_default_state_given_explicitly_is_bit_identical_and_bad_states_are_named():
    rng = np.random.default_rng(7)
    starts, days, evidence, pairs = _history(rng, 4, 3)
    g, pg = _dist(rng, 3), _dist(rng, 3, 3)
    kw = dict(**HALF_LIVES, shrinkage_strength=2.0, prior_strength=4.0)
    default = {"p": np.tile(g, (4, 1)), "counts": np.zeros((4, 3, 3)), "rt": np.zeros((4, 3)), "lt": np.zeros((4, 3))}
    plain = k.interest_recurrence(starts, days, evidence, pairs, g, pg, 0.5, 0.3, **kw)
    given_ = k.interest_recurrence(starts, days, evidence, pairs, g, pg, 0.5, 0.3, **kw, initial=default)
    for name in ("p", "m", "p_new", "rt", "lt", "counts"):
        np.testing.assert_array_equal(given_[name], plain[name], err_msg=name)
    assert (default["counts"] == 0).all() and (default["p"] == g).all()  # the caller's arrays are not written to
    with pytest.raises(ValueError, match=r"missing \['lt'\]"):
        k.interest_recurrence(starts, days, evidence, pairs, g, pg, 0.5, 0.3, **kw,
                              initial={n: v for n, v in default.items() if n != "lt"})
    with pytest.raises(ValueError, match=r"counts has shape \(4, 3\), expected \(4, 3, 3\)"):
        k.interest_recurrence(starts, days, evidence, pairs, g, pg, 0.5, 0.3, **kw,
                              initial={**default, "counts": np.zeros((4, 3))})


def _binary(fmt: str):
    return lambda self, other: _Expr(fmt.format(a=self.text, b=getattr(other, "text", repr(other))))


class _Expr:
    """An operand with arithmetic operators only (as a Spark Column has): records the expression it builds."""

    def __init__(self, text):
        self.text = text

    __add__, __radd__ = _binary("({a} + {b})"), _binary("({b} + {a})")
    __mul__, __rmul__ = _binary("({a} * {b})"), _binary("({b} * {a})")
    __truediv__, __rtruediv__ = _binary("({a} / {b})"), _binary("({b} / {a})")


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), users=st.integers(1, 6), n_cats=st.integers(1, 5),
       kappa=st.sampled_from([0.5, 4.0, 1e3]))
def test_posterior_from_total_is_the_posterior_and_needs_only_arithmetic(seed, users, n_cats, kappa):
    rng = np.random.default_rng(seed)
    q, n = _dist(rng, users, n_cats), rng.integers(0, 5, (users, n_cats)).astype(float)
    got = k.posterior_from_total(q, n, n.sum(axis=-1, keepdims=True), kappa)
    np.testing.assert_array_equal(got, k.posterior(q, n, kappa))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    expr = k.posterior_from_total(_Expr("q"), _Expr("n"), _Expr("N"), np.float64(kappa))
    assert expr.text == f"((({kappa!r} * q) + n) / ({kappa!r} + N))"


def test_category_popularity_hand_computed():
    """Mirrors the Spark ``driftrec.migration.transitions.category_popularity`` (over the ``count`` column of
    ``global_category_matrix``): column sums of the counts, smoothed by ``alpha`` per category."""
    counts = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # landing counts (3, 1, 1), total 5, K*alpha = 1.5
    np.testing.assert_allclose(k.category_popularity(counts, 0.5), [3.5 / 6.5, 1.5 / 6.5, 1.5 / 6.5], rtol=1e-15)
    np.testing.assert_allclose(k.category_popularity(np.array([[1.0, 3.0], [0.0, 2.0]]), 1.0), [0.25, 0.75],
                               rtol=1e-15)
    np.testing.assert_allclose(k.category_popularity(np.zeros((4, 4)), 0.1), [0.25] * 4, rtol=1e-15)
    assert k.category_popularity(counts, 0.0).tolist() == [0.6, 0.2, 0.2]  # without smoothing: the landing shares


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), users=st.integers(1, 6), n_cats=st.integers(1, 5))
def test_batched_prior_and_posterior_equal_the_single_user_kernels(seed, users, n_cats):
    rng = np.random.default_rng(seed)
    p, g = _dist(rng, users, n_cats), _dist(rng, n_cats)
    counts = rng.random((users, n_cats, n_cats)) * 5 * (rng.random((users, n_cats, n_cats)) < 0.5)
    pg, ev = _dist(rng, n_cats, n_cats), rng.integers(0, 5, (users, n_cats)).astype(float)
    rows = k.shrunk_rows(counts, pg, 2.0)
    np.testing.assert_allclose(rows.sum(axis=-1), 1.0, atol=1e-12)
    new = k.update_interest(p, rows, g, 0.6, 0.3, ev, 3.0)
    np.testing.assert_allclose(new.sum(axis=1), 1.0, atol=1e-12)
    for u in range(users):
        one = k.shrunk_rows(counts[u], pg, 2.0)
        np.testing.assert_allclose(rows[u], one, rtol=1e-14)
        np.testing.assert_allclose(new[u], k.update_interest(p[u], one, g, 0.6, 0.3, ev[u], 3.0), rtol=1e-12)
        np.testing.assert_allclose(k.decay(counts, np.arange(users, dtype=float), 7.0)[u],
                                   k.decay(counts[u], float(u), 7.0), rtol=1e-15)


def _csr(rng, n):
    rows = [np.sort(rng.choice(n, rng.integers(0, min(n, 4) + 1), replace=False)) for _ in range(n)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate(rows).astype(np.int64) if n else np.zeros(0, np.int64)
    dense = np.zeros((n, n))
    probs = rng.random(len(indices))
    for r in range(n):
        dense[r, indices[indptr[r] : indptr[r + 1]]] = probs[indptr[r] : indptr[r + 1]]
    return indptr, indices, probs, dense


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), users=st.integers(1, 5), slots=st.integers(1, 3))
def test_item_and_category_terms_equal_a_dense_loop(seed, n, users, slots):
    rng = np.random.default_rng(seed)
    indptr, indices, probs, dense = _csr(rng, n)
    recent = rng.integers(-1, n, (users, slots))
    n_recent = rng.integers(0, slots + 1, users).astype(float)
    recent[np.arange(slots)[None, :] >= n_recent[:, None]] = -1  # as laid out by the scorer: no item past n_recent
    cols = np.sort(np.stack([np.append(rng.choice(n, (n + 1) // 2, replace=False), n) for _ in range(users)]), 1)
    full = k.item_term(recent, n_recent, indptr, indices, probs, n)
    cand = k.item_term(recent, n_recent, indptr, indices, probs, n, cols)
    for u in range(users):
        want = sum((dense[r] for r in recent[u] if r >= 0), np.zeros(n)) / max(n_recent[u], 1.0)
        np.testing.assert_allclose(full[u], want, rtol=1e-14)
        np.testing.assert_allclose(cand[u], np.append(want, 0.0)[cols[u]], rtol=1e-14)
    # Recency decay: slot r weighs d**r, renormalised over the user's n_recent slots; via the per-slot rows too.
    d = float(rng.uniform(0.1, 1.0))
    decayed = k.item_term(recent, n_recent, indptr, indices, probs, n, decay=d)
    weights = k.recency_weights(n_recent, slots, d)
    slot_rows = k.successor_slots(recent, indptr, indices, probs, n)
    np.testing.assert_allclose(k.item_term_from_slots(slot_rows, weights), decayed, rtol=1e-12, atol=1e-15)
    for u in range(users):
        m = int(n_recent[u])
        norm = sum(d**s for s in range(m)) or 1.0
        want = sum((d**s * dense[recent[u, s]] for s in range(m) if recent[u, s] >= 0), np.zeros(n)) / norm
        np.testing.assert_allclose(decayed[u], want, rtol=1e-12, atol=1e-15)
    pic, q = _dist(rng, 3, n), _dist(rng, users, 3)
    np.testing.assert_allclose(k.category_term(q, pic, cols), np.take_along_axis(
        np.hstack([q @ pic, np.zeros((users, 1))]), cols, axis=1), rtol=1e-13)
    w = k.item_weight(n_recent > 0, 0.4)
    score = k.migration_score(full, q @ pic, w)
    # With a distribution as the item term (or none), the score is a distribution over the catalogue.
    np.testing.assert_allclose(score.sum(axis=1)[n_recent == 0], 1.0, atol=1e-12)


def test_reasons_pick_the_strongest_source_the_top_category_and_the_kind():
    # items 0..3; recent item 0 leads to 1 (0.7) and 2 (0.3); recent item 3 leads to 2 (0.6).
    indptr, indices, probs = np.array([0, 2, 2, 2, 3]), np.array([1, 2, 2]), np.array([0.7, 0.3, 0.6])
    pic = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # category 0: items 0, 1; 1: items 2, 3
    chosen = np.array([[1, 2, 3], [1, 2, -1]])
    recent = np.array([[0, 3], [-1, -1]])
    q = np.array([[0.9, 0.1], [0.5, 0.5]])
    rise = np.array([[0.0, 0.2], [0.0, 0.0]])
    item = np.array([[0.35, 0.45, 0.0], [0.0, 0.0, 0.0]])
    cat = np.array([[0.45, 0.05, 0.05], [0.25, 0.25, 0.0]])
    w = np.array([0.5, 0.0])
    via_r, via_c, kind = k.reasons(item, cat, w, recent, chosen, q, rise, pic, np.array([True, False]), 0.05,
                                   indptr, indices, probs)
    assert via_r[0].tolist() == [0, 3, -1] and via_c[0].tolist() == [0, 1, 1]
    assert kind[0].tolist() == [k.CATEGORY, k.SUCCESSOR, k.RISING]
    assert kind[1].tolist() == [k.POPULAR_IN, k.POPULAR_IN, k.POPULAR] and via_c[1].tolist() == [0, 1, -1]
    at_margin = k.reasons(item, cat, w, recent, chosen, q, rise, pic, np.array([True, False]), 0.2,
                          indptr, indices, probs)[2]
    assert at_margin[0, 2] == k.CATEGORY  # a rise at the margin is not rising


def test_bulk_bucket_equals_one_user_at_a_time():
    """The rebuild's pandas function: a bucket of users gives each user the rows it gives them alone, and a
    transition on a day without evidence (here after a user's last day) is not read, not even by the next user."""
    import datetime as dt
    from pathlib import Path

    import pandas as pd

    from driftrec.migration.bulk import interest_recurrence
    from tests.conftest import make_conf

    rng = np.random.default_rng(3)
    cats = ["a", "b", "c"]
    ev, pr = [], []
    for u in (5, 9, 40, 41):
        days = sorted({dt.date(2026, 1, 1) + dt.timedelta(int(d)) for d in rng.integers(0, 30, 4)})
        for d in days:
            ev += [(u, str(c), d, float(rng.integers(1, 4))) for c in rng.choice(cats, 2, replace=False)]
            pr += [(u, str(rng.choice(cats)), str(rng.choice(cats)), d, float(rng.random() * 2)) for _ in range(2)]
        pr.append((u, "a", "b", days[-1] + dt.timedelta(3), 5.0))
    evidence = pd.DataFrame(ev, columns=["user_id", "category", "event_date", "n"]).assign(bucket=0)
    pairs = pd.DataFrame(pr, columns=["user_id", "from_cat", "to_cat", "to_date", "n"]).assign(bucket=0)
    g, pg = _dist(rng, 3), _dist(rng, 3, 3)
    fn = interest_recurrence(cats, g, pg, make_conf(Path("/tmp/unused")).migration, 0.5, 0.3)
    key = ["user_id", "kind", "day", "category"]
    together = fn(evidence, pairs).sort_values(key).reset_index(drop=True)
    alone = pd.concat([fn(evidence[evidence.user_id == u], pairs[pairs.user_id == u]) for u in (5, 9, 40, 41)])
    alone = alone.sort_values(key).reset_index(drop=True)
    assert len(together) == len(alone) and (together["kind"] == "state").sum() == 4 * 3
    pd.testing.assert_frame_equal(together[key], alone[key])
    num = ["p", "m", "g", "n", "p_new", "rt_new", "lt_new"]
    np.testing.assert_allclose(together[num].to_numpy(float), alone[num].to_numpy(float), rtol=1e-13)
    state = together[together["kind"] == "state"]
    np.testing.assert_allclose(state.groupby("user_id")["p_new"].sum(), 1.0, atol=1e-12)
