"""The migration engine's arithmetic, in one place: the interest recurrence, the terms of ``p(u, i, t+1)`` and the
choice of a reason.

Every production path calls these functions (the nightly interest update, the one-pass rebuild, top-k scoring,
evaluation), so a change of the
formula is an edit of this module. They are batched: a function over a user's ``(K,)`` interest or ``(K, K)``
matrix also takes ``(U, K)`` / ``(U, K, K)`` stacks, and the item terms read the successor matrix as CSR. Spark
reference transforms in ``tests/reference_migration.py`` are checked against them on small inputs. Categories are
indices ``0..K-1``; a transition matrix ``P`` has ``P[j, k] = P(next = k | previous = j)``.
"""

from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-300  # q is floored before the log so an impossible event costs a large, finite penalty


def decay_factor(days, half_life_days: float | None):
    """``2^(-days/T)``: the weight an observation keeps after ``days`` (a float, or an array of per-user gaps).

    ``T = None`` is no decay (factor 1): the item level's default, ``migration.item_half_life_days``."""
    d = np.asarray(days, dtype=np.float64)
    f = np.ones_like(d) if half_life_days is None else 2.0 ** (-d / half_life_days)
    return float(f) if f.ndim == 0 else f


def decay(counts: np.ndarray, days, half_life_days: float | None) -> np.ndarray:
    """``counts`` decayed by ``days``; with per-user ``days`` (U,) the leading axis of ``counts`` is the user."""
    f = decay_factor(days, half_life_days)
    if np.ndim(f):
        f = np.reshape(f, f.shape + (1,) * (np.ndim(counts) - 1))
    return counts * f


def decayed_update(prev: np.ndarray, days: float, half_life_days: float | None, new: np.ndarray) -> np.ndarray:
    """``C_D = 2^(-(D - D_prev)/T) * C_prev + new_D`` (``T = None``: ``C_prev + new_D``)."""
    return decay(prev, days, half_life_days) + new


def smoothed_rows(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Global matrix: ``(C[j,k] + alpha) / (sum_k C[j,k] + K*alpha)``; every row sums to 1 for ``alpha > 0``."""
    k = counts.shape[1]
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + k * alpha)


def category_popularity(counts: np.ndarray, alpha: float) -> np.ndarray:
    """``g[k] = (sum_j C[j,k] + alpha) / (sum C + K*alpha)`` from the dense (K, K) global counts (not probabilities).

    The numpy twin of :func:`driftrec.migration.transitions.category_popularity`, which reads only the ``count``
    column of the global matrix; sums to 1 for ``alpha > 0``."""
    landing = np.asarray(counts, dtype=np.float64).sum(axis=0)
    return (landing + alpha) / (landing.sum() + len(landing) * alpha)


def shrunk_rows(user_counts: np.ndarray, global_p: np.ndarray, strength: float) -> np.ndarray:
    """User matrix ``(C_u[j,k] + s*P_g[j,k]) / (n_u[j] + s)``: a row with no evidence is the global row.

    ``user_counts`` is (K, K) or a (U, K, K) stack of users."""
    n = user_counts.sum(axis=-1, keepdims=True)
    denom = n + strength
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = (user_counts + strength * global_p) / denom
    return np.where(denom > 0, rows, global_p)


def migration_term(p: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """``sum_j p_j P(.|j)``: where the interest mass flows in one step; (K,) @ (K, K) or (U, K) with (U, K, K)."""
    if np.ndim(p) == 1 and np.ndim(transition) == 2:
        return p @ transition
    return np.einsum("...j,...jk->...k", p, transition)


def prior_from_terms(p, m, g, a, b):
    """``q = a*p + b*m + (1-a-b)*g`` from the migration term ``m``: THE prior formula.

    Works on numpy arrays and, unchanged, on Spark columns (``fit`` and the nightly log-likelihood use it so)."""
    return a * p + b * m + (1.0 - a - b) * g


def prior(p: np.ndarray, transition: np.ndarray, g: np.ndarray, a: float, b: float) -> np.ndarray:
    """Prediction for the next day: ``a*p + b*p.P + (1-a-b)*g`` (``g``: global category popularity)."""
    return prior_from_terms(p, migration_term(p, transition), g, a, b)


def posterior_from_total(q, n, total, kappa: float):
    """``(kappa*q + n) / (kappa + N)`` given the user's total ``N``: THE posterior formula.

    Only arithmetic operators, so it works on numpy arrays and, unchanged, on Spark columns (the nightly pass's
    ``p_new`` column). ``kappa`` is cast to a Python float so that a numpy scalar never meets a Column."""
    kappa = float(kappa)
    return (kappa * q + n) / (kappa + total)


def posterior(q: np.ndarray, evidence: np.ndarray, prior_strength: float) -> np.ndarray:
    """``p_new = (kappa*q + n) / (kappa + N)``: the prior weighted ``kappa`` plus the day's counts, per user row."""
    return posterior_from_total(q, evidence, evidence.sum(axis=-1, keepdims=True), prior_strength)


def update_interest(
    p: np.ndarray,
    transition: np.ndarray,
    g: np.ndarray,
    a: float,
    b: float,
    evidence: np.ndarray,
    prior_strength: float,
) -> np.ndarray:
    """The night's move: the prior, weighted ``prior_strength``, plus the day's category counts, renormalised."""
    return posterior(prior(p, transition, g, a, b), evidence, prior_strength)


def log_likelihood(
    evidence: np.ndarray, p: np.ndarray, transition: np.ndarray, g: np.ndarray, a: float, b: float
) -> float:
    """Log-likelihood of held-out category counts under the prior ``q(a, b)``."""
    q = np.maximum(prior(p, transition, g, a, b), LOG_FLOOR)
    return float((evidence * np.log(q)).sum())


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, in ``[0, 1]``."""
    total = p + q  # log2(x / ((p+q)/2)) as log2(x) + 1 - log2(p+q): no underflow of (p+q)/2 for subnormal x

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float((x[mask] * (np.log2(x[mask]) + 1.0 - np.log2(total[mask]))).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def successor_row(counts: np.ndarray, popularity: np.ndarray, smoothing: float, top_n: int, self_index: int):
    """One item's successor distribution: ``(c_j + s*pi_j) / (c + s)`` pruned to the top-N, renormalised.

    ``pi`` spreads the pseudo-count over the ``top_n`` most popular other items (ties by index), so a pair seen once
    does not get probability 1. Returns ``(indices, probs)`` ordered by rank.
    """
    n_items = counts.shape[0]
    order = np.lexsort((np.arange(n_items), -popularity))
    top = np.array([j for j in order if j != self_index and popularity[j] > 0][:top_n], dtype=int)
    pi = np.zeros(n_items)
    if len(top):
        pi[top] = popularity[top] / popularity[top].sum()
    raw = (counts + smoothing * pi) / (counts.sum() + smoothing)
    raw[self_index] = 0.0
    keep = [j for j in np.lexsort((np.arange(n_items), -raw)) if raw[j] > 0][:top_n]
    keep = np.array(keep, dtype=int)
    return keep, raw[keep] / raw[keep].sum()


# --- The interest recurrence over many users at once --------------------------------------------------------------


def interest_recurrence(
    starts: np.ndarray,
    days: np.ndarray,
    evidence: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    g: np.ndarray,
    global_p: np.ndarray,
    a: float,
    b: float,
    *,
    half_life_days: float,
    recent_half_life_days: float,
    baseline_half_life_days: float,
    shrinkage_strength: float,
    prior_strength: float,
    initial: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every user's interest over their active days, all users of a batch stepped together.

    Rows are user-days sorted by user then day; user ``u`` owns rows ``starts[u]:starts[u+1]`` (``starts`` has
    U + 1 entries, a user may own none). ``days`` (R,) are day numbers, ``evidence`` (R, K) the day's category
    counts, ``pairs`` = ``(row, from, to, n)`` the category transitions that arrive on a row's day (added to the
    user's counts after that day's update). A user starts from ``g`` with no counts, or from ``initial`` = ``{p:
    (U, K), counts: (U, K, K), rt: (U, K), lt: (U, K)}`` already decayed to the user's first row's day (the caller
    decays, each table by its own date and half-life; the first row applies no decay). Returns (R, K) arrays per
    row: ``p`` (interest before the day), ``m`` (migration term before it), ``p_new``, ``rt``, ``lt`` (decayed
    evidence after it); and ``counts`` (U, K, K), each user's transition counts after their last row, as of its day.
    """
    starts = np.asarray(starts, dtype=np.int64)
    n_users, k = len(starts) - 1, len(g)
    lengths = np.diff(starts)
    rows = starts[-1]
    out = {name: np.zeros((rows, k)) for name in ("p", "m", "p_new", "rt", "lt")}
    if initial is None:
        p = np.tile(np.asarray(g, dtype=np.float64), (n_users, 1))
        counts = np.zeros((n_users, k, k))
        rt, lt = np.zeros((n_users, k)), np.zeros((n_users, k))
    else:
        p, counts, rt, lt = _initial_state(initial, n_users, k)
    last = np.zeros(n_users)
    p_row, p_from, p_to, p_n = (np.asarray(x) for x in pairs)
    p_user = np.searchsorted(starts, p_row, side="right") - 1
    p_step = p_row - starts[p_user]
    order = np.argsort(p_step, kind="stable")
    p_bounds = np.searchsorted(p_step[order], np.arange(int(lengths.max(initial=0)) + 1))
    for step in range(int(lengths.max(initial=0))):
        users = np.flatnonzero(lengths > step)
        r = starts[users] + step
        gap = days[r] - last[users] if step else np.zeros(len(users))
        c = decay(counts[users], gap, half_life_days)
        rt_u = decay(rt[users], gap, recent_half_life_days)
        lt_u = decay(lt[users], gap, baseline_half_life_days)
        n = evidence[r]
        mig = migration_term(p[users], shrunk_rows(c, global_p, shrinkage_strength))
        out["p"][r], out["m"][r] = p[users], mig
        p[users] = posterior(prior_from_terms(p[users], mig, g, a, b), n, prior_strength)
        rt[users], lt[users] = rt_u + n, lt_u + n
        out["p_new"][r], out["rt"][r], out["lt"][r] = p[users], rt[users], lt[users]
        sel = order[p_bounds[step] : p_bounds[step + 1]]
        np.add.at(c, (np.searchsorted(users, p_user[sel]), p_from[sel], p_to[sel]), p_n[sel])
        counts[users], last[users] = c, days[r]
    out["counts"] = counts
    return out


def _initial_state(initial: dict[str, np.ndarray], n_users: int, k: int):
    """Copies of ``initial``'s ``p, counts, rt, lt`` as float64, checked against (U, K) / (U, K, K)."""
    shapes = {"p": (n_users, k), "counts": (n_users, k, k), "rt": (n_users, k), "lt": (n_users, k)}
    missing = sorted(set(shapes) - set(initial))
    if missing:
        raise ValueError(f"interest_recurrence initial state: missing {missing} (has {sorted(initial)})")
    state = [np.array(initial[name], dtype=np.float64) for name in shapes]
    for (name, want), x in zip(shapes.items(), state, strict=True):
        if x.shape != want:
            raise ValueError(f"interest_recurrence initial state: {name} has shape {x.shape}, expected {want}")
    return state


# --- p(u, i, t+1) = w * item_term + (1 - w) * category_term, and its reason ----------------------------------------


def csr_lookup(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, rows: np.ndarray,
               targets: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
    """``M[rows[b], targets[b, m]]`` of a CSR matrix with ascending column indices per row: (B, M), 0 where absent.

    ``rows[b] < 0`` is an empty row; ``targets`` may hold ``n`` (padding). Without ``targets`` the dense rows
    (B, n) come back. No loop over ``b``: the gathered segments are searched as one sorted array.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(indptr) - 1 if n is None else n
    lo = np.where(rows >= 0, indptr[np.maximum(rows, 0)], 0)
    lengths = np.where(rows >= 0, indptr[np.maximum(rows, 0) + 1] - lo, 0)
    owner = np.repeat(np.arange(len(rows)), lengths)
    pos = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    if targets is None:
        out = np.zeros((len(rows), n))
        out[owner, indices[pos]] = values[pos]
        return out
    targets = np.asarray(targets, dtype=np.int64)
    keys = owner * (n + 1) + indices[pos]
    want = np.arange(len(rows))[:, None] * (n + 1) + targets
    at = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    if len(keys) == 0:
        return np.zeros(targets.shape)
    return np.where(keys[at] == want, values[pos][at], 0.0)


def recency_weights(n_recent: np.ndarray, slots: int, decay: float = 1.0) -> np.ndarray:
    """(B, slots) weights of each user's recent items, most recent first: ``decay**r`` over the first ``n_recent``
    slots, renormalised to sum to 1 (all 0 for a user without recent items). ``decay = 1``: the plain mean."""
    n_recent = np.asarray(n_recent, dtype=np.int64)
    raw = np.power(float(decay), np.arange(slots, dtype=np.float64))[None, :] * (
        np.arange(slots)[None, :] < n_recent[:, None])
    return raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-300)


def successor_slots(recent: np.ndarray, succ_indptr: np.ndarray, succ_indices: np.ndarray, succ_probs: np.ndarray,
                    n: int, cols: np.ndarray | None = None) -> np.ndarray:
    """(L, B, n) or (L, B, M): ``P(i | recent[:, r])`` for each recent slot ``r`` (0 for an unknown item)."""
    recent = np.asarray(recent, dtype=np.int64)
    return np.stack([csr_lookup(succ_indptr, succ_indices, succ_probs, recent[:, slot], cols, n)
                     for slot in range(recent.shape[1])])


def item_term_from_slots(slots: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_r weights[b, r] * P(i | recent[b, r])`` from :func:`successor_slots` and :func:`recency_weights`."""
    return np.einsum("lbn,bl->bn", slots, weights[:, : slots.shape[0]])


def item_term(recent: np.ndarray, n_recent: np.ndarray, succ_indptr: np.ndarray, succ_indices: np.ndarray,
              succ_probs: np.ndarray, n: int, cols: np.ndarray | None = None, decay: float = 1.0) -> np.ndarray:
    """Recency-weighted successor probability ``sum_r w_r P(i | r)`` over each user's recent items: (B, n) or (B, M).

    ``recent`` (B, L) item indices, most recent first, -1 for none/unknown; ``n_recent`` (B,) how many slots count
    (0: no item term); weights :func:`recency_weights` (``decay = 1``: the mean over the ``n_recent`` slots, an unknown
    item counting as a zero row); ``cols`` (B, M) candidate indices ascending per row, padded with ``n``.
    """
    recent = np.asarray(recent, dtype=np.int64).reshape(len(n_recent), -1)
    weights = recency_weights(n_recent, recent.shape[1], decay)
    out = np.zeros((len(n_recent), n if cols is None else cols.shape[1]))
    for slot in range(recent.shape[1]):
        out += weights[:, slot][:, None] * csr_lookup(succ_indptr, succ_indices, succ_probs, recent[:, slot], cols, n)
    return out


def item_term_entries(recent: np.ndarray, n_recent: np.ndarray, succ_indptr: np.ndarray, succ_indices: np.ndarray,
                      succ_probs: np.ndarray, decay: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`item_term` as sparse entries ``(row, col, value)``, one per (recent slot, successor): summing the values
    of equal ``(row, col)`` gives the dense term. A full-catalogue scorer adds them into its score matrix in place
    instead of materialising (B, n) per slot, most of which is zeros."""
    recent = np.asarray(recent, dtype=np.int64).reshape(len(n_recent), -1)
    weights = recency_weights(n_recent, recent.shape[1], decay)
    slot_w = weights[:, : recent.shape[1]]
    live = (recent >= 0) & (slot_w > 0)
    rows = np.nonzero(live)  # (user, slot) pairs, row-major
    items = recent[rows]
    lo, hi = succ_indptr[items], succ_indptr[items + 1]
    lengths = hi - lo
    pos = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    user = np.repeat(rows[0], lengths)
    return user, succ_indices[pos], succ_probs[pos] * np.repeat(slot_w[rows], lengths)


def category_term(q: np.ndarray, pic: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """``sum_c q_u(c) P(i | c)``: (B, C) @ (C, n), or over candidates ``cols`` (B, M, padded with n -> 0)."""
    if cols is None:
        return q @ pic
    pic_t = np.vstack([pic.T, np.zeros((1, pic.shape[0]))])
    return np.einsum("bc,bmc->bm", q, pic_t[cols])


def item_weight(has_recent: np.ndarray, weight: float) -> np.ndarray:
    """``w``: the item term's weight, 0 for a user with no recent items (the category term then carries it all)."""
    return np.where(np.asarray(has_recent, dtype=bool), float(weight), 0.0)


def migration_score(item: np.ndarray, category: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``p(u, i, t+1) = w * item_term + (1 - w) * category_term`` with per-user ``w`` (B,)."""
    w = np.asarray(w, dtype=np.float64)[:, None]
    return w * item + (1.0 - w) * category


SUCCESSOR, RISING, CATEGORY, POPULAR_IN, POPULAR = "successor", "rising", "category", "popular_in", "popular"


def reasons(item: np.ndarray, category: np.ndarray, w: np.ndarray, recent: np.ndarray, chosen: np.ndarray,
            q: np.ndarray, rise: np.ndarray, pic: np.ndarray, known: np.ndarray, rising_margin: float,
            succ_indptr: np.ndarray, succ_indices: np.ndarray, succ_probs: np.ndarray):
    """The reason for each chosen item: ``(via_item, via_cat, kind)``, each (B, M).

    ``item``/``category`` are the two terms at the chosen items, ``chosen`` (B, M) item indices (-1 = none).
    ``via_item``: the recent item (index, -1 none) with the largest ``P(i | r)``, ties to the more recent;
    ``via_cat``: the category with the largest ``q(c) P(i | c)``, ties to the lower index, -1 when none counts.
    ``kind``: the successor when the item term's share wins, else "rising" when that category's recent profile
    runs ``rising_margin`` above the long-term one, else the category, else popularity; a user without history
    (``known`` False) gets "popular_in" their category or "popular".
    """
    chosen = np.asarray(chosen, dtype=np.int64)
    recent = np.asarray(recent, dtype=np.int64).reshape(len(chosen), -1)
    n = pic.shape[1]
    targets = np.where(chosen >= 0, chosen, n)
    via_p, via_r = np.zeros(chosen.shape), np.full(chosen.shape, -1, np.int64)
    for slot in range(recent.shape[1]):
        p = csr_lookup(succ_indptr, succ_indices, succ_probs, recent[:, slot], targets, n)
        better = p > via_p
        via_p = np.where(better, p, via_p)
        via_r = np.where(better, recent[:, slot][:, None], via_r)
    if pic.shape[0]:
        pic_t = np.vstack([pic.T, np.zeros((1, pic.shape[0]))])
        contrib = q[:, None, :] * pic_t[targets]  # (B, M, C)
        c, has_cat = contrib.argmax(axis=2), contrib.max(axis=2) > 0
        rising = has_cat & (np.take_along_axis(rise, c, axis=1) > rising_margin)
    else:
        c, has_cat = np.zeros(chosen.shape, np.int64), np.zeros(chosen.shape, bool)
        rising = has_cat
    w = np.asarray(w, dtype=np.float64)[:, None]
    succ_wins = w * item >= (1.0 - w) * category
    known = np.asarray(known, dtype=bool)[:, None]
    kind = np.where(
        known,
        np.select([(via_r >= 0) & succ_wins, rising, has_cat], [SUCCESSOR, RISING, CATEGORY], POPULAR),
        np.where(has_cat, POPULAR_IN, POPULAR),
    )
    return via_r, np.where(has_cat, c, -1), kind
