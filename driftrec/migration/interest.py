"""Interest state: the prior ``q = a*p + b*p.P_u + (1-a-b)*g`` and the night's update, run by the kernel in Spark.

Time advances per active day of a user: a night moves the interest of the users who have events that night, so
its cost follows the night's events, not the user base. A user with no stored interest starts from ``g``, the
global category popularity. The arithmetic is :mod:`driftrec.migration.kernels`'; here users are hashed into
buckets and each bucket is one batched kernel call in a grouped pandas UDF (``K``, the categories, is small:
the global matrix and ``g`` travel with the function).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from driftrec.migration import kernels
from driftrec.migration.transitions import require_columns

USERS_PER_BUCKET = 2000  # users per pandas call: their (users, K, K) counts stay a few MB
FRAME_SCHEMA = (
    "user_id long, category string, has_prev boolean, p double, g double, n double, rt_prev double, "
    "lt_prev double, m double"
)


def prior_column(a: Column | float, b: Column | float) -> Column:
    """``q`` over columns ``p``, ``m``, ``g``: :func:`kernels.prior_from_terms` applied to Spark columns."""
    a_c = a if isinstance(a, Column) else F.lit(float(a))
    b_c = b if isinstance(b, Column) else F.lit(float(b))
    return kernels.prior_from_terms(F.col("p"), F.col("m"), F.col("g"), a_c, b_c)


def user_buckets(users: DataFrame, n_users: int | None = None) -> Column:
    """A ``bucket`` column: ``user_id`` hashed into enough buckets for ``USERS_PER_BUCKET`` users each.

    ``n_users`` (e.g. an approximate count already collected) saves the count of ``users``' distinct ids."""
    spark = users.sparkSession
    if n_users is None:
        n_users = users.select("user_id").distinct().count()
    n = max(spark.sparkContext.defaultParallelism, -(-n_users // USERS_PER_BUCKET))
    return F.pmod(F.xxhash64("user_id"), F.lit(n)).alias("bucket")


def dense_categories(popularity: DataFrame, global_matrix: DataFrame, categories: DataFrame | None = None):
    """``(cats, g, P_g)`` on the driver: sorted category names, (K,) popularity and the dense (K, K) matrix."""
    g_rows = {r["category"]: float(r["g"]) for r in popularity.select("category", "g").collect()}
    if categories is not None:
        keep = {r["category"] for r in categories.select("category").distinct().collect()}
        g_rows = {c: v for c, v in g_rows.items() if c in keep}
    cats = sorted(g_rows)
    index = {c: i for i, c in enumerate(cats)}
    pg = np.zeros((len(cats), len(cats)))
    for r in global_matrix.select("from_cat", "to_cat", "prob").collect():
        if r["from_cat"] in index and r["to_cat"] in index:
            pg[index[r["from_cat"]], index[r["to_cat"]]] = float(r["prob"])
    return cats, np.array([g_rows[c] for c in cats]), pg


def _frame_function(cats: list[str], g: np.ndarray, pg: np.ndarray, strength: float):
    """``cells`` + ``counts`` of a bucket of users -> their dense :data:`FRAME_SCHEMA` rows."""
    index = pd.Index(cats)
    k = len(cats)

    def per_bucket(cells: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
        if cells.empty:
            return pd.DataFrame(columns=[c.split()[0] for c in FRAME_SCHEMA.split(", ")])
        users, u = np.unique(cells["user_id"].to_numpy(np.int64), return_inverse=True)
        c = index.get_indexer(cells["category"])
        stored = cells["p"].notna().to_numpy()
        has_prev = np.zeros(len(users), bool)
        has_prev[u[stored]] = True
        dense = {}
        for col in ("p", "rt", "lt", "n"):
            x = np.zeros((len(users), k))
            ok = (c >= 0) & cells[col].notna().to_numpy()
            np.add.at(x, (u[ok], c[ok]), cells[col].to_numpy(np.float64)[ok])
            dense[col] = x
        p = np.where(has_prev[:, None], dense["p"], g)
        user_counts = np.zeros((len(users), k, k))
        if not counts.empty:
            cu = np.searchsorted(users, counts["user_id"].to_numpy(np.int64))
            cu = np.minimum(cu, len(users) - 1)
            f, t = index.get_indexer(counts["from_cat"]), index.get_indexer(counts["to_cat"])
            ok = (users[cu] == counts["user_id"].to_numpy(np.int64)) & (f >= 0) & (t >= 0)
            np.add.at(user_counts, (cu[ok], f[ok], t[ok]), counts["count"].to_numpy(np.float64)[ok])
        m = kernels.migration_term(p, kernels.shrunk_rows(user_counts, pg, strength))
        return pd.DataFrame({
            "user_id": np.repeat(users, k), "category": np.tile(np.asarray(cats, dtype=object), len(users)),
            "has_prev": np.repeat(has_prev, k), "p": p.ravel(), "g": np.tile(g, len(users)),
            "n": dense["n"].ravel(), "rt_prev": dense["rt"].ravel(), "lt_prev": dense["lt"].ravel(), "m": m.ravel(),
        })

    return per_bucket


def interest_frame(cells: DataFrame, user_counts: DataFrame, cats: list[str], g: np.ndarray, pg: np.ndarray,
                   strength: float) -> DataFrame:
    """Dense :data:`FRAME_SCHEMA` rows for every user of ``cells(user_id, category, p, rt, lt, n)``.

    A user's stored interest is the cells with ``p`` set (none: the user starts from ``g``); ``rt``/``lt``/``n``
    are summed per cell, null as 0; a row with a null category only names the user. ``m`` is the kernel's
    migration term with ``P_u`` shrunk toward ``pg`` by ``strength``; ``user_counts(user_id, from_cat, to_cat,
    count)``.
    """
    require_columns(cells, ("user_id", "category", "p", "rt", "lt", "n"), "interest cells")
    require_columns(user_counts, ("user_id", "from_cat", "to_cat", "count"), "interest user_counts")
    bucket = user_buckets(cells)
    left = cells.select(bucket, "user_id", "category", *(F.col(c).cast("double") for c in ("p", "rt", "lt", "n")))
    right = user_counts.join(cells.select("user_id").distinct(), "user_id", "left_semi").select(
        bucket, "user_id", "from_cat", "to_cat", "count")
    return left.groupBy("bucket").cogroup(right.groupBy("bucket")).applyInPandas(
        _frame_function(cats, g, pg, strength), FRAME_SCHEMA)
