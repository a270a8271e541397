"""Independent table writes from driver threads (``driftrec.spark.run_concurrently``), on real Delta tables."""

from __future__ import annotations

import threading

import pytest

from driftrec import lakehouse
from driftrec.spark import run_concurrently
from driftrec.tables import ITEM_POPULARITY, USER_LAST_EVENT


def test_every_write_runs_the_first_error_is_raised_and_threads_inherit_the_job_group(spark, conf):
    pop = spark.createDataFrame([(i, float(i), "2026-01-01") for i in range(1, 6)],
                                "item_id long, count double, as_of string")
    pop = pop.selectExpr("item_id", "count", "cast(as_of as date) as as_of")
    last = spark.createDataFrame([(7, 70, 1_700_000_000, "e7")], "user_id long, item_id long, ts long, event_id string")
    last = last.selectExpr("user_id", "item_id", "cast(ts as timestamp) as event_ts", "event_id")
    seen: dict[str, object] = {}

    def write_pop():
        seen["group"] = spark.sparkContext.getLocalProperty("spark.jobGroup.id")
        seen["thread"] = threading.current_thread().name
        return lakehouse.replace_where(spark, conf, ITEM_POPULARITY, pop, "true")

    def fail():
        raise ValueError("boom")

    def write_last():
        lakehouse.merge_upsert(spark, conf, USER_LAST_EVENT, last, update_when="true")
        return "last"

    spark.sparkContext.setJobGroup("caller-group", "test")
    try:
        with pytest.raises(ValueError, match="boom"):
            run_concurrently(spark, [write_pop, fail, write_last], threads=3)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    # The failure did not stop the other writes, which ran on pool threads with the caller's job group.
    assert lakehouse.read_table(spark, conf, ITEM_POPULARITY).count() == 5
    stored = lakehouse.read_table(spark, conf, USER_LAST_EVENT).select("user_id", "item_id").collect()
    assert [tuple(r) for r in stored] == [(7, 70)]
    assert seen["group"] == "caller-group" and str(seen["thread"]).startswith("driftrec-write")
    # Results in task order; one thread runs them in order on the caller's thread.
    order: list[int] = []
    one = run_concurrently(spark, [lambda: order.append(1) or "a", lambda: order.append(2) or "b"], threads=1)
    assert one == ["a", "b"]
    assert order == [1, 2]
    assert run_concurrently(spark, [lambda: 1, lambda: 2, lambda: 3], threads=2) == [1, 2, 3]
