"""Spark jobs per named block of driver code, counted by job group through the status tracker.

A night's cost on small data is the number of driver-issued actions (each one an analysis pass, plus one Spark job
per query stage), so that is what a benchmark or a job budget measures. Counting is off unless :func:`start` was
called: a job group replaces the caller's own (a scheduler cancelling by group would lose our jobs), so production
runs set none. Blocks nest; a job counts for the innermost block only.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pyspark.sql import SparkSession

F = TypeVar("F", bound=Callable)
_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")

_run: str | None = None  # group id prefix while counting, else None
_names: list[str] = []  # block names in order of first use
_seconds: dict[str, float] = {}  # wall seconds per name, nested blocks included
_lock = threading.Lock()  # blocks may run on several driver threads (concurrent table writes)


def start() -> None:
    """Count from now on, from zero."""
    global _run
    _run = f"driftrec-{uuid.uuid4().hex[:8]}:"
    _names.clear()
    _seconds.clear()


def stop() -> None:
    global _run
    _run = None


def counting() -> bool:
    return _run is not None


@contextmanager
def job_group(spark: SparkSession, name: str) -> Iterator[None]:
    """Jobs started on this thread inside the block count for ``name`` (the group is put back afterwards)."""
    if _run is None:
        yield
        return
    sc = spark.sparkContext
    saved = {key: sc.getLocalProperty(key) for key in _PROPERTIES}
    with _lock:
        if name not in _seconds:
            _names.append(name)
            _seconds[name] = 0.0
    sc.setJobGroup(_run + name, name)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        with _lock:
            _seconds[name] += time.perf_counter() - t0
        for key, value in saved.items():
            sc.setLocalProperty(key, value)  # None removes it


def _drain(spark: SparkSession) -> None:
    """Let the listener bus deliver every job start to the status store (it is asynchronous)."""
    try:
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()
    except Exception:  # an internal API: fall back to a pause
        time.sleep(1.0)


def report(spark: SparkSession) -> dict[str, int]:
    """Spark jobs per block name since :func:`start`, in order of first use; empty when not counting.

    Only jobs the status store still retains count (``spark.ui.retainedJobs``, 1000 by default): read it soon after.
    """
    if _run is None:
        return {}
    _drain(spark)
    tracker = spark.sparkContext.statusTracker()
    return {name: len(tracker.getJobIdsForGroup(_run + name)) for name in _names}


def seconds() -> dict[str, float]:
    """Wall seconds per block name since :func:`start` (a block's nested blocks included)."""
    return dict(_seconds)


def grouped(name: str) -> Callable[[F], F]:
    """Decorate a method of an object with a ``spark`` attribute: its jobs count for ``name``."""
    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with job_group(self.spark, name):
                return method(self, *args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate
