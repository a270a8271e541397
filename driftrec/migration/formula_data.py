"""Users whose interest follows the engine's own formula with known ``(a, b)``, and the engine's fit in numpy.

This is the ground truth for the ``(a, b)`` fit (:mod:`driftrec.migration.fit`): if the data are drawn from exactly
the model the engine assumes, the fit must give ``(a, b)`` back. The model, per user and active day ``t``:

* ``q_t = a*p_t + b*p_t.P + (1-a-b)*g``  (:func:`kernels.prior_from_terms`, ``m = p.P`` by :func:`migration_term`)
* the day's category counts ``n_t ~ Multinomial(N_t, q_t)``: the held-out evidence the fit scores by ``n*log q``
* ``p_{t+1} = (kappa*q_t + n_t) / (kappa + N_t)``  (:func:`kernels.posterior_from_total`)

A user starts from ``g`` (a new user in the engine) and is active every day (``N_t = 1 + Poisson(events_per_day -
1)``): the engine moves a user only on an active day. There are no within-day category pairs, so every user's
matrix is ``P`` itself (``shrunk_rows`` of no counts is the global row). :func:`engine_cells` replays the evidence
through :func:`kernels.interest_recurrence` at given ``(a, b)``, as the nightly pass does, and :func:`fit_cells` is
the grid search of :func:`fit.fit_drift` over the same cells in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftrec.migration import kernels


@dataclass(frozen=True)
class FormulaUsers:
    """What :func:`generate_formula_users` drew: ``evidence`` (days, U, K) counts, ``interest`` (days + 1, U, K)
    the true ``p`` before each day (and after the last), ``prior`` (days, U, K) the true ``q`` of each day."""

    evidence: np.ndarray
    interest: np.ndarray
    prior: np.ndarray


def generate_formula_users(n_users: int, k: int, a: float, b: float, P: np.ndarray, g: np.ndarray, days: int,
                           events_per_day: float, prior_strength: float, rng: np.random.Generator) -> FormulaUsers:
    """``n_users`` users stepped ``days`` times by the engine's prior and posterior at ``(a, b)`` (module docstring)."""
    P, g = np.asarray(P, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if P.shape != (k, k) or g.shape != (k,):
        raise ValueError(f"P must be ({k}, {k}) and g ({k},); got {P.shape} and {g.shape}")
    if not (a >= 0 and b >= 0 and a + b <= 1 + 1e-12):
        raise ValueError(f"(a, b) = ({a}, {b}) is outside the simplex a, b >= 0, a + b <= 1")
    if events_per_day < 1:
        raise ValueError(f"events_per_day must be >= 1 (every user is active every day); got {events_per_day}")
    p = np.tile(g, (n_users, 1))
    interest, prior, evidence = [p], [], []
    for _ in range(days):
        q = kernels.prior(p, P, g, a, b)
        q = np.maximum(q, 0.0) / np.maximum(q, 0.0).sum(axis=1, keepdims=True)  # float noise only
        total = 1 + rng.poisson(events_per_day - 1, size=n_users)
        n = rng.multinomial(total, q).astype(np.float64)
        p = kernels.posterior_from_total(q, n, total[:, None].astype(np.float64), prior_strength)
        prior.append(q)
        evidence.append(n)
        interest.append(p)
    return FormulaUsers(evidence=np.stack(evidence), interest=np.stack(interest), prior=np.stack(prior))


def engine_cells(evidence: np.ndarray, P: np.ndarray, g: np.ndarray, a: float, b: float, prior_strength: float,
                 first_day: int = 1) -> dict[str, np.ndarray]:
    """The held-out cells the nightly fit sees when the engine's state was built at ``(a, b)``.

    ``evidence`` (days, U, K) runs through :func:`kernels.interest_recurrence` (every user from ``g``); the cells of
    days ``>= first_day`` (day 0 is a new user: ``has_prev`` false, not held out) with ``n > 0`` come back as flat
    ``p, m, g, n`` arrays, as the Spark fit's rows."""
    days, n_users, k = evidence.shape
    rows = np.transpose(evidence, (1, 0, 2)).reshape(n_users * days, k)
    empty = np.zeros(0, np.int64)
    out = kernels.interest_recurrence(
        np.arange(n_users + 1) * days, np.tile(np.arange(days, dtype=np.float64), n_users), rows,
        (empty, empty, empty, np.zeros(0)), g, P, a, b, half_life_days=1.0, recent_half_life_days=1.0,
        baseline_half_life_days=1.0, shrinkage_strength=1.0, prior_strength=prior_strength,
    )
    held = (np.tile(np.arange(days), n_users) >= first_day)[:, None] & (rows > 0)
    return {"p": out["p"][held], "m": out["m"][held], "g": np.broadcast_to(g, rows.shape)[held], "n": rows[held]}


def grid_log_likelihood(cells: dict[str, np.ndarray], grid: list[tuple[float, float]]) -> list[tuple]:
    """``[(a, b, sum n*log max(q, LOG_FLOOR))]``: the numpy twin of :func:`fit.grid_log_likelihood`."""
    out = []
    for a, b in grid:
        q = np.maximum(kernels.prior_from_terms(cells["p"], cells["m"], cells["g"], a, b), kernels.LOG_FLOOR)
        out.append((a, b, float((cells["n"] * np.log(q)).sum())))
    return out


def fit_cells(cells: dict[str, np.ndarray], step: float = 0.05) -> tuple[float, float, float]:
    """``(a, b, loglik)``: :func:`fit.fit_drift`'s search (:func:`fit.grid_search`) on numpy cells."""
    from driftrec.migration.fit import grid_search

    return grid_search(lambda grid: grid_log_likelihood(cells, grid), step)
