"""The two evaluation splits, as DataFrame transforms over canonical ``events``.

* :func:`leave_one_out`: per user, ordered by time (ties by event id), the last event is the test, the one before
  the validation (the protocol of published sequential-recommendation tables). Users with fewer than three events
  only train. Tuning uses :func:`leave_one_out_for_validation` (neither held-out event seen, the validation event is
  the truth); the test run sees everything but the test event, so the validation event is the user's latest history,
  as at serving time.
* :func:`temporal`: events up to a cutoff date train and build every statistic; the users' events in the following
  ``horizon_days`` are the truth. Truth is limited to users with history before the cutoff (others are cold start,
  a separate question), and to items first seen by that user after the cutoff (re-consumption is not a
  recommendation).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


@dataclass(frozen=True)
class Split:
    train: DataFrame  # events the system may see
    truth: DataFrame  # (user_id, item_id): what it is scored against
    valid: DataFrame | None = None  # (user_id, item_id) for tuning; leave-one-out only


def leave_one_out(events: DataFrame) -> Split:
    by_user = Window.partitionBy("user_id").orderBy(F.desc("event_ts"), F.desc("event_id"))
    counted = Window.partitionBy("user_id")
    ranked = events.withColumn("_pos", F.row_number().over(by_user)).withColumn(
        "_n", F.count(F.lit(1)).over(counted)
    )
    eligible = F.col("_n") >= 3
    test = ranked.where(eligible & (F.col("_pos") == 1)).select("user_id", "item_id")
    valid = ranked.where(eligible & (F.col("_pos") == 2)).select("user_id", "item_id")
    train = ranked.where(~eligible | (F.col("_pos") > 1)).drop("_pos", "_n")
    return Split(train=train, truth=test, valid=valid)


def leave_one_out_for_validation(events: DataFrame) -> Split:
    """The split tuning runs on: the validation event is the truth and neither it nor the test event is seen."""
    loo = leave_one_out(events)
    held = loo.truth.unionByName(loo.valid)
    last_two = Window.partitionBy("user_id").orderBy(F.desc("event_ts"), F.desc("event_id"))
    ranked = events.withColumn("_pos", F.row_number().over(last_two))
    train = ranked.join(held.select("user_id").distinct().withColumn("_held", F.lit(True)), "user_id", "left")
    train = train.where(F.col("_held").isNull() | (F.col("_pos") > 2)).drop("_pos", "_held")
    return Split(train=train, truth=loo.valid)


def temporal(events: DataFrame, cutoff: dt.date, horizon_days: int) -> Split:
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    end = cutoff + dt.timedelta(days=horizon_days)
    train = events.where(F.col("event_date") <= F.lit(cutoff))
    later = events.where((F.col("event_date") > F.lit(cutoff)) & (F.col("event_date") <= F.lit(end)))
    seen = train.select("user_id", "item_id").distinct()
    truth = (
        later.select("user_id", "item_id").distinct()
        .join(train.select("user_id").distinct(), "user_id", "left_semi")
        .join(seen, ["user_id", "item_id"], "left_anti")
    )
    return Split(train=train, truth=truth)
