"""Plain numpy versions of the engine's arithmetic.

They are the executable specification: Hypothesis property tests run on them, and the Spark code in the sibling
modules is tested against them on small inputs. Categories are indices ``0..K-1``; a transition matrix ``P`` has
``P[j, k] = P(next = k | previous = j)``.
"""

from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-300  # q is floored before the log so an impossible event costs a large, finite penalty


def decay_factor(days: float, half_life_days: float) -> float:
    """``2^(-days/T)``: the weight an observation keeps after ``days``."""
    return float(2.0 ** (-days / half_life_days))


def decay(counts: np.ndarray, days: float, half_life_days: float) -> np.ndarray:
    return counts * decay_factor(days, half_life_days)


def decayed_update(prev: np.ndarray, days: float, half_life_days: float, new: np.ndarray) -> np.ndarray:
    """``C_D = 2^(-(D - D_prev)/T) * C_prev + new_D``."""
    return decay(prev, days, half_life_days) + new


def smoothed_rows(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Global matrix: ``(C[j,k] + alpha) / (sum_k C[j,k] + K*alpha)``; every row sums to 1 for ``alpha > 0``."""
    k = counts.shape[1]
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + k * alpha)


def shrunk_rows(user_counts: np.ndarray, global_p: np.ndarray, strength: float) -> np.ndarray:
    """User matrix ``(C_u[j,k] + s*P_g[j,k]) / (n_u[j] + s)``: a row with no evidence is the global row."""
    n = user_counts.sum(axis=1, keepdims=True)
    denom = n + strength
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = (user_counts + strength * global_p) / denom
    return np.where(denom > 0, rows, global_p)


def migration_term(p: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """``sum_j p_j P(.|j)``: where the interest mass flows in one step."""
    return p @ transition


def prior(p: np.ndarray, transition: np.ndarray, g: np.ndarray, a: float, b: float) -> np.ndarray:
    """Prediction for the next day: ``a*p + b*p.P + (1-a-b)*g`` (``g``: global category popularity)."""
    return a * p + b * migration_term(p, transition) + (1.0 - a - b) * g


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
    q = prior(p, transition, g, a, b)
    return (prior_strength * q + evidence) / (prior_strength + evidence.sum())


def log_likelihood(
    evidence: np.ndarray, p: np.ndarray, transition: np.ndarray, g: np.ndarray, a: float, b: float
) -> float:
    """Log-likelihood of held-out category counts under the prior ``q(a, b)``."""
    q = np.maximum(prior(p, transition, g, a, b), LOG_FLOOR)
    return float((evidence * np.log(q)).sum())


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, in ``[0, 1]``."""
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float((x[mask] * np.log2(x[mask] / m[mask])).sum())

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
