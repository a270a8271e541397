"""Maximum-likelihood fit of the drift weights ``a`` and ``b`` on a night's held-out events.

The state before night D predicts D's category counts through ``q = a*p + b*m + (1-a-b)*g``; the log-likelihood
``sum n * log q`` is concave in ``(a, b)`` over the simplex ``a, b >= 0, a + b <= 1``. A coarse grid finds the
region of the maximum and a grid ten times finer around it refines it. Each grid is one Spark aggregation
that returns one row per grid point, so nothing that grows with users or events reaches the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec.migration.interest import prior_column
from driftrec.migration.kernels import LOG_FLOOR


@dataclass(frozen=True)
class DriftFit:
    a: float
    b: float
    log_likelihood: float
    n_events: float


def simplex_grid(step: float, a_range=(0.0, 1.0), b_range=(0.0, 1.0)) -> list[tuple[float, float]]:
    """Points ``(a, b)`` on a ``step`` lattice inside the ranges and the simplex (rounded to kill float noise)."""
    def axis(lo: float, hi: float) -> list[float]:
        n = int(round((hi - lo) / step))
        return [round(min(max(lo + i * step, 0.0), 1.0), 10) for i in range(n + 1)]

    return sorted({(a, b) for a in axis(*a_range) for b in axis(*b_range) if a + b <= 1.0 + 1e-12})


def grid_log_likelihood(spark: SparkSession, rows: DataFrame, grid: list[tuple[float, float]]) -> list[tuple]:
    """``[(a, b, loglik)]`` for every grid point; ``rows(p, m, g, n)`` are the held-out (user, category) cells."""
    points = spark.createDataFrame(grid, "ga double, gb double")
    q = F.greatest(prior_column(F.col("ga"), F.col("gb")), F.lit(LOG_FLOOR))
    out = (
        rows.select("p", "m", "g", "n")
        .crossJoin(F.broadcast(points))
        .groupBy("ga", "gb")
        .agg(F.sum(F.col("n") * F.log(q)).alias("ll"))
        .collect()
    )
    return [(r["ga"], r["gb"], r["ll"]) for r in out]


def _best(points: list[tuple]) -> tuple:
    # Highest likelihood; ties go to the smaller a, then the smaller b, so the fit is deterministic.
    return max(points, key=lambda t: (t[2], -t[0], -t[1]))


def grid_search(score, step: float) -> tuple[float, float, float]:
    """``(a, b, loglik)``: the best of ``score(simplex_grid(step))``, then of the grid ten times finer around it.

    ``score(grid) -> [(a, b, loglik)]`` is the Spark scorer below or a numpy one (``formula_data``): one search."""
    a, b, _ = _best(score(simplex_grid(step)))
    fine = simplex_grid(step / 10, (max(a - step, 0.0), min(a + step, 1.0)), (max(b - step, 0.0), min(b + step, 1.0)))
    return _best(score(fine))


def fit_drift(spark: SparkSession, rows: DataFrame, step: float, total: float | None = None) -> DriftFit | None:
    """Fit ``(a, b)`` on ``rows(p, m, g, n)`` (cells with ``n > 0``); ``None`` when there is no evidence."""
    rows = rows.where(F.col("n") > 0).select("p", "m", "g", "n").cache()
    try:
        if total is None:
            total = rows.agg(F.sum("n")).first()[0]
        if not total:
            return None
        a, b, ll = grid_search(lambda grid: grid_log_likelihood(spark, rows, grid), step)
        return DriftFit(a=a, b=b, log_likelihood=ll, n_events=float(total))
    finally:
        rows.unpersist()


def log_likelihood_at(rows: DataFrame, a: float, b: float) -> float:
    q = F.greatest(prior_column(a, b), F.lit(LOG_FLOOR))
    value = rows.where(F.col("n") > 0).agg(F.sum(F.col("n") * F.log(q))).first()[0]
    return float(value or 0.0)
