"""The run lock (driftrec.runlock) on a real Delta table: racing contenders, stale owners, pid reuse."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from driftrec.runlock import LOCK_NAME, PipelineLocked, RunLock, process_start
from driftrec.tables import RUN_LOCK
from tests.conftest import make_conf

ROUNDS, CONTENDERS = 12, 3


def _attempt(lock: RunLock, start: threading.Barrier) -> bool:
    start.wait()
    try:
        lock.acquire()
    except PipelineLocked:
        return False
    return True


def test_racing_contenders_never_share_the_lock(spark, tmp_path):
    """Rounds of 3 threads acquiring at once: one winner on a free lock, none on a held one, never two."""
    conf = make_conf(tmp_path / "lake")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONTENDERS) as pool:
        for r in range(ROUNDS):
            held = r % 6 == 5  # every sixth round someone already holds the lock
            owner = RunLock(spark, conf, f"owner-{r}").acquire() if held else None
            start = threading.Barrier(CONTENDERS)
            locks = [RunLock(spark, conf, f"round{r}-c{i}") for i in range(CONTENDERS)]
            won = list(pool.map(lambda lk: _attempt(lk, start), locks))
            winners = [lk for lk, w in zip(locks, won) if w]
            assert len(winners) == (0 if held else 1), (r, won)
            rows = spark.read.format("delta").load(locks[0].path).collect()
            expected = owner if held else winners[0]
            assert [(x["token"], x["run_id"]) for x in rows] == [(expected.token, expected.run_id)], r  # one holder
            expected.release()
    assert locks[0].holder() is None
    print(f"{ROUNDS} rounds x {CONTENDERS} contenders in {time.perf_counter() - t0:.0f}s")


def _plant(spark, lock: RunLock, **owner) -> None:
    """Write a holder row as another run would have left it."""
    row = {"lock_name": LOCK_NAME, "token": "planted", "run_id": "planted-run", "host": socket.gethostname(),
           "pid": os.getpid(), "pid_started": process_start(os.getpid()),
           "acquired_at": dt.datetime.now(dt.UTC).replace(tzinfo=None), **owner}
    lock._table().delete()
    spark.createDataFrame([row], RUN_LOCK.schema).write.format("delta").mode("append").save(lock.path)


def test_stale_owners_are_taken_over_and_live_ones_refuse(spark, tmp_path):
    conf = make_conf(tmp_path / "lake", "pipeline.lock_stale_hours=2")
    lock = RunLock(spark, conf, "me")
    assert process_start(os.getpid()) is not None  # Linux /proc: the pid reuse guard is active here

    # A live owner on this host (this very process, as another thread's run would be): refused, owner named.
    _plant(spark, lock)
    with pytest.raises(PipelineLocked, match=rf"run planted-run \(pid {os.getpid()} on {socket.gethostname()}"):
        lock.acquire()
    # The same live owner, past lock_stale_hours (a long backfill): still refused, its process decides.
    _plant(spark, lock, acquired_at=dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=3))
    with pytest.raises(PipelineLocked, match="planted-run"):
        lock.acquire()
    # Another host, recent: its process cannot be checked from here, so it holds until the stale age.
    _plant(spark, lock, host="elsewhere", pid=1)
    with pytest.raises(PipelineLocked, match="planted-run"):
        lock.acquire()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=3)
    stale_owners = {
        "dead pid on this host": {"pid": dead.pid, "pid_started": None},
        "pid reused by another process": {"pid_started": process_start(os.getpid()) - 1},
        "other host, older than lock_stale_hours": {"host": "elsewhere", "pid": 1, "acquired_at": old},
    }
    for why, owner in stale_owners.items():
        _plant(spark, lock, **owner)
        with lock:
            holder = lock.holder()
            assert (holder["token"], holder["run_id"]) == (lock.token, "me"), why
        assert lock.holder() is None, why
        lock = RunLock(spark, conf, "me")
