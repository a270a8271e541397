"""The kernel in Spark (grouped pandas UDFs) against the Spark reference joins of ``tests/reference_migration``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from driftrec.migration import interest, kernels
from driftrec.migration.scoring import MarkovState, predicted_interest
from tests import reference_migration as ref
from tests import reference_night
from tests.conftest import make_conf

CATS = ["A", "B", "C"]


def _inputs(spark, rng):
    """Four users: 1 and 2 with stored interest and counts, 3 new with evidence, 4 stored but without counts."""
    df = spark.createDataFrame
    glob = kernels.smoothed_rows(rng.integers(0, 9, (3, 3)).astype(float), 0.5)
    g = rng.random(3)
    g /= g.sum()
    global_matrix = df([(CATS[i], CATS[j], 1.0, float(glob[i, j])) for i in range(3) for j in range(3)],
                       "from_cat string, to_cat string, count double, prob double")
    popularity = df([(c, float(g[i])) for i, c in enumerate(CATS)], "category string, g double")
    prev_rows = []
    for u in (1, 2, 4):
        p = rng.random(3) * (rng.random(3) < 0.8)
        p = p / p.sum() if p.sum() else np.array([1.0, 0, 0])
        prev_rows += [(u, c, float(p[i]), float(rng.random() * 3), float(rng.random() * 9))
                      for i, c in enumerate(CATS) if p[i] > 0 or u == 4]
    previous = df(prev_rows, "user_id long, category string, p double, rt_prev double, lt_prev double")
    counts = df([(u, CATS[i], CATS[j], float(rng.integers(1, 5))) for u in (1, 2, 3) for i in range(3)
                 for j in range(3) if rng.random() < 0.5 and not (u == 1 and i == 2)],
                "user_id long, from_cat string, to_cat string, count double")
    evidence = df([(u, c, float(rng.integers(1, 4))) for u in (1, 2, 3, 4) for c in CATS if rng.random() < 0.6]
                  + [(3, "B", 1.0)], "user_id long, category string, n double")
    users = df([(u,) for u in (1, 2, 3, 4)], "user_id long")
    categories = popularity.select("category")
    return users, categories, previous, evidence, popularity, counts, global_matrix


@pytest.mark.parametrize("strength", [0.0, 2.0])
def test_night_frame_and_update_equal_the_spark_reference(spark, strength):
    inputs = _inputs(spark, np.random.default_rng(7))
    key = ["user_id", "category"]
    got = reference_night.night_frame(*inputs, strength).toPandas().sort_values(key).reset_index(drop=True)
    want = ref.night_frame(*inputs, strength).toPandas().sort_values(key).reset_index(drop=True)
    assert len(got) == 4 * 3 and list(got["user_id"]) == list(want["user_id"])
    assert list(got["has_prev"]) == list(want["has_prev"]) and not got.loc[got.user_id == 3, "has_prev"].any()
    for col in ("p", "g", "n", "rt_prev", "lt_prev", "m"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12, atol=1e-15, err_msg=col)

    frame = spark.createDataFrame(want[[c.split()[0] for c in interest.FRAME_SCHEMA.split(", ")]],
                                  interest.FRAME_SCHEMA)
    up = reference_night.updated_interest(frame, 0.55, 0.3, 4.0).toPandas().sort_values(key).reset_index(drop=True)
    up_ref = ref.updated_interest(frame, 0.55, 0.3, 4.0).toPandas().sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(up["q"], up_ref["q"], rtol=1e-12)
    np.testing.assert_allclose(up["p_new"], up_ref["p_new"], rtol=1e-12)
    np.testing.assert_allclose(up.groupby("user_id")["p_new"].sum(), 1.0, atol=1e-12)


def test_prior_column_is_the_kernel_prior(spark):
    rows = [(0.2, 0.5, 0.1), (0.7, 0.1, 0.3), (0.0, 0.4, 0.6)]
    df = spark.createDataFrame(rows, "p double, m double, g double")
    got = [r["q"] for r in df.select(interest.prior_column(0.6, 0.25).alias("q")).collect()]
    p, m, g = (np.array(x) for x in zip(*rows, strict=True))
    np.testing.assert_allclose(got, kernels.prior_from_terms(p, m, g, 0.6, 0.25), rtol=1e-15)


def test_predicted_interest_equals_the_spark_reference(spark):
    rng = np.random.default_rng(11)
    users, _, previous, _, _, counts, global_matrix = _inputs(spark, rng)
    state = MarkovState(
        interest=previous.select("user_id", "category", "p", F.col("rt_prev").alias("recent_count"),
                                 F.col("lt_prev").alias("long_term_count")),
        user_counts=counts, global_matrix=global_matrix, item_successors=None, item_cats=None,
        item_popularity=None, titles=None, a=0.5, b=0.35,
    )
    mconf = make_conf(Path("/tmp/unused"), "migration.shrinkage_strength=2.0").migration
    key = ["user_id", "category"]
    got = predicted_interest(users, state, mconf).toPandas().sort_values(key).reset_index(drop=True)
    want = ref.predicted_interest(users, state, mconf).toPandas().sort_values(key).reset_index(drop=True)
    assert len(got) == 12 and list(got["category"]) == list(want["category"])
    np.testing.assert_allclose(got["q"], want["q"], rtol=1e-12)
    np.testing.assert_allclose(got["rise"], want["rise"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.groupby("user_id")["q"].sum(), 1.0, atol=1e-12)
