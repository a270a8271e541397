"""Registry gating: a worse candidate never displaces the current model, and there is always one current."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from driftrec import lakehouse, registry
from driftrec.tables import MODEL_REGISTRY


def test_decide_applies_the_tolerance():
    assert registry.decide(0.30, None, 0.01).promote
    assert registry.decide(0.295, 0.30, 0.01).promote
    d = registry.decide(0.28, 0.30, 0.01)
    assert not d.promote and "0.0200 below" in d.reason and "stays" in d.reason
    assert not registry.decide(float("nan"), 0.30, 0.01).promote


def test_record_promotes_or_keeps_the_current_version(spark, conf):
    def rec(version, ndcg, tolerance=0.01):
        cur = registry.current(spark, conf, "sasrec")
        decision = registry.decide(ndcg, cur["ndcg_at_10"] if cur else None, tolerance)
        registry.record(spark, conf, version=version, model_name="sasrec", trained_through=dt.date(2026, 1, version),
                        parent_version=cur["version"] if cur else None, config={"d": 1},
                        metrics={"ndcg_at_10": ndcg}, checkpoint=f"/ck/v{version}", decision=decision)
        return decision

    assert registry.next_version(spark, conf) == 1
    assert rec(1, 0.30).promote
    assert not rec(2, 0.25).promote  # worse beyond tolerance: v1 stays current
    assert rec(3, 0.295).promote  # within tolerance of v1
    reg = lakehouse.read_table(spark, conf, MODEL_REGISTRY).orderBy("version").toPandas()
    assert reg["is_current"].tolist() == [False, False, True]
    assert reg["parent_version"].tolist()[1:] == [1, 1]
    assert "stays" in reg["decision"][1] and json.loads(reg["metrics_json"][2]) == {"ndcg_at_10": 0.295}
    assert registry.current(spark, conf, "sasrec")["version"] == 3
    assert registry.next_version(spark, conf) == 4
    assert registry.current(spark, conf, "other") is None


@pytest.mark.parametrize("cand,cur,tol,promote", [(0.1, 0.1, 0.0, True), (0.0999, 0.1, 0.0, False)])
def test_decide_boundaries(cand, cur, tol, promote):
    assert registry.decide(cand, cur, tol).promote is promote
