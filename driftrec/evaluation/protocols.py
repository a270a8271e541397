"""The two evaluation splits, as DataFrame transforms over canonical ``events``.

* :func:`leave_one_out`: per user, ordered by time (ties by event id), the last event is the test, the one before
  the validation (the protocol of published sequential-recommendation tables). Users with fewer than three events
  only train. Tuning uses :func:`leave_one_out_for_validation` (neither held-out event seen, the validation event is
  the truth); the test run sees everything but the test event, so the validation event is the user's latest history,
  as at serving time. :func:`tuning_split` names each protocol's validation split (temporal's: the events up to the
  cutoff, each user's latest held out, as ``driftrec tune`` would have run that night).
* :func:`temporal`: events up to a cutoff date train and build every statistic, as a nightly batch job would see
  them; each user's next ``next_items`` new items after the cutoff (within ``horizon_days`` if set) are the truth.
  Truth is limited to users with history before the cutoff (others are cold start, a separate question), and to
  items first seen by that user after the cutoff (re-consumption is not a recommendation). The default cutoff is a
  quantile of event time (:func:`quantile_cutoff`), so the protocol judges every user active on both sides of it,
  not only those of the last few days.
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


def tuning_split(protocol: str, events: DataFrame, train: DataFrame) -> Split:
    """The validation split a protocol's settings are chosen on; no test event is in it. Leave-one-out: each user's
    second-to-last event is the truth and neither held-out event is seen. Temporal (``train``: the events up to the
    cutoff): what ``driftrec tune`` would have run on that night, each user's latest event before the cutoff held
    out as the truth, as a nightly job serves what its last tuning chose."""
    if protocol == "leave_one_out":
        return leave_one_out_for_validation(events)
    if protocol == "temporal":
        loo = leave_one_out(train)
        return Split(train=loo.train, truth=loo.truth)
    raise ValueError(f"no validation split for protocol {protocol!r}")


def temporal(events: DataFrame, cutoff: dt.date, horizon_days: int | None = None,
             next_items: int | None = 1) -> Split:
    """Train on ``event_date <= cutoff``; truth: each user's first ``next_items`` items new to them after it (None:
    every new item), ordered by time then event id, within ``horizon_days`` after the cutoff (None: no limit)."""
    if horizon_days is not None and horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    if next_items is not None and next_items < 1:
        raise ValueError(f"next_items must be at least 1, got {next_items}")
    train = events.where(F.col("event_date") <= F.lit(cutoff))
    later = events.where(F.col("event_date") > F.lit(cutoff))
    if horizon_days is not None:
        later = later.where(F.col("event_date") <= F.lit(cutoff + dt.timedelta(days=horizon_days)))
    seen = train.select("user_id", "item_id").distinct()
    new = (
        later.join(train.select("user_id").distinct(), "user_id", "left_semi")
        .join(seen, ["user_id", "item_id"], "left_anti")
        .groupBy("user_id", "item_id").agg(F.min(F.struct("event_ts", "event_id")).alias("_first"))
    )
    if next_items is not None:
        order = Window.partitionBy("user_id").orderBy(F.col("_first.event_ts"), F.col("_first.event_id"))
        new = new.withColumn("_pos", F.row_number().over(order)).where(F.col("_pos") <= next_items)
    return Split(train=train, truth=new.select("user_id", "item_id"))


def quantile_cutoff(events: DataFrame, quantile: float) -> dt.date:
    """The last event date on or before which at most ``quantile`` of the events fall (the first date if even that
    holds more): the cutoff that leaves the last ``1 - quantile`` of events, and every user active then, to judge,
    whatever the log's time span. Collects one count per day, never per event or user."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the cutoff quantile must be in (0, 1), got {quantile}")
    days = events.groupBy("event_date").count().orderBy("event_date").collect()
    if not days:
        raise ValueError("no events to place a temporal cutoff in")
    total, seen, cutoff = sum(r["count"] for r in days), 0, days[0]["event_date"]
    for r in days:
        seen += r["count"]
        if seen > quantile * total + 1e-9:
            break
        cutoff = r["event_date"]
    return cutoff
