"""The run lock (driftrec.runlock): real processes racing for the local flock, killed holders, the Delta lock of
object-store roots (racing threads, stale owners, pid reuse), and a killed run's ``running`` rows marked failed."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from driftrec import lakehouse, stage_runs
from driftrec.config import load_config
from driftrec.runlock import LOCK_FILE, LOCK_NAME, OWNER_FILE, PipelineLocked, RunLock, process_start
from driftrec.stage_runs import FAILED, RUNNING, SUCCEEDED, StageResult
from driftrec.tables import PIPELINE_RUNS, RUN_LOCK
from tests.conftest import REPO, make_conf

ROUNDS, CONTENDERS = 12, 3
PROCESS_ROUNDS = 300


# ---- local roots: real processes ---------------------------------------------------------------------------------
def _contend(root: str, me: int, rounds: int, start, attempted, inside, most, winners) -> None:
    """One contender process: each round, try the lock at the same moment as the others; a winner holds it until
    every contender has tried, counting itself inside; ``most`` keeps the largest number of holders seen at once."""
    conf = load_config(values={"lakehouse.root": root})
    for r in range(rounds):
        lock = RunLock(None, conf, f"c{me}-r{r}")
        start.wait()
        try:
            lock.acquire()
        except PipelineLocked:
            attempted.wait()
            continue
        with inside.get_lock():
            inside.value += 1
            most.value = max(most.value, inside.value)
        winners[r * CONTENDERS + me] = 1
        attempted.wait()  # held while every other contender tries
        with inside.get_lock():
            inside.value -= 1
        lock.release()


def test_racing_processes_never_share_the_lock(tmp_path):
    """3 processes x 300 rounds on a local root: exactly one holder per round, never two at once."""
    ctx = mp.get_context("spawn")
    start, attempted = ctx.Barrier(CONTENDERS), ctx.Barrier(CONTENDERS)
    inside, most = ctx.Value("i", 0), ctx.Value("i", 0)
    winners = ctx.Array("b", PROCESS_ROUNDS * CONTENDERS)
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path / "lake"), i, PROCESS_ROUNDS, start, attempted, inside,
                                                 most, winners)) for i in range(CONTENDERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * CONTENDERS
    per_round = [sum(winners[r * CONTENDERS:(r + 1) * CONTENDERS]) for r in range(PROCESS_ROUNDS)]
    assert most.value == 1
    assert per_round == [1] * PROCESS_ROUNDS
    assert len({tuple(winners[r * CONTENDERS:(r + 1) * CONTENDERS]) for r in range(PROCESS_ROUNDS)}) > 1  # a race
    assert not (tmp_path / "lake" / "_pipeline" / OWNER_FILE).exists()  # every holder released
    print(f"{PROCESS_ROUNDS} rounds x {CONTENDERS} processes in {time.perf_counter() - t0:.1f}s")


HOLD = (
    "import sys, time\n"
    "from driftrec.config import load_config\n"
    "from driftrec.runlock import RunLock\n"
    "conf = load_config(values={'lakehouse.root': sys.argv[1]})\n"
    "lock = RunLock(None, conf, 'holder-run').acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(300)\n"
)


def test_a_live_holder_refuses_others_and_a_killed_one_is_taken_over(tmp_path):
    conf = make_conf(tmp_path / "lake")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "lake")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = RunLock(None, conf, "probe").holder()
        assert (owner["run_id"], owner["pid"], owner["pid_started"]) == ("holder-run", holder.pid,
                                                                          process_start(holder.pid))
        with pytest.raises(PipelineLocked, match=rf"run holder-run \(pid {holder.pid} on {socket.gethostname()}"):
            RunLock(None, conf, "second").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed without releasing: its owner record stays, but the kernel dropped its flock with the process.
    assert json.loads((tmp_path / "lake" / "_pipeline" / OWNER_FILE).read_text())["run_id"] == "holder-run"
    assert RunLock(None, conf, "probe").holder() is None
    with RunLock(None, conf, "next") as lock:
        assert lock.taken_over["run_id"] == "holder-run" and lock.taken_over["pid"] == holder.pid
        assert lock.holder()["token"] == lock.token
    assert RunLock(None, conf, "after").holder() is None
    with RunLock(None, conf, "clean") as lock:  # released properly: nothing to take over
        assert lock.taken_over is None


def test_an_empty_or_unreadable_owner_record_is_not_a_free_lock(tmp_path):
    """The lock is the flock, not the owner record: a holder whose record is not written yet still holds."""
    conf = make_conf(tmp_path / "lake")
    with RunLock(None, conf, "first"):
        (tmp_path / "lake" / "_pipeline" / OWNER_FILE).write_text("")  # as if caught before its record was written
        with pytest.raises(PipelineLocked, match="owner is still being recorded"):
            RunLock(None, conf, "second").acquire()
    assert (tmp_path / "lake" / "_pipeline" / LOCK_FILE).exists()  # never deleted (see the module doc)


def test_a_killed_runs_running_rows_are_marked_failed_by_the_next_holder(spark, tmp_path):
    conf = make_conf(tmp_path / "lake")
    lakehouse.ensure_table(spark, conf, PIPELINE_RUNS)
    started = dt.datetime(2026, 1, 2, 3, 0)
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    for run_id, ds, stage, status in [("killed-run", d1, "migrate", SUCCEEDED), ("killed-run", d1, "train", RUNNING),
                                      ("killed-run", d2, "migrate", RUNNING), ("standalone", d2, "topk", RUNNING)]:
        stage_runs.record(spark, conf, run_id, ds, stage, status, started, None, StageResult(detail="x"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD.replace("holder-run", "killed-run"),
                               str(tmp_path / "lake")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    with RunLock(spark, conf, "next-run") as lock:
        assert stage_runs.fail_abandoned(spark, conf, lock.taken_over, lock.run_id) == 2
    rows = {(r["run_id"], r["ds"], r["stage"]): r for r in lakehouse.read_table(spark, conf, PIPELINE_RUNS).collect()}
    assert {k: r["status"] for k, r in rows.items()} == {
        ("killed-run", d1, "migrate"): SUCCEEDED, ("killed-run", d1, "train"): FAILED,
        ("killed-run", d2, "migrate"): FAILED,
        ("standalone", d2, "topk"): RUNNING,  # not the killed run's: a stage launched on its own may be running
    }
    failed = rows[("killed-run", d1, "train")]
    assert failed["detail"].startswith("abandoned: run killed-run") and "next-run" in failed["detail"]
    assert failed["finished_at"] is not None and failed["started_at"] == started
    assert stage_runs.fail_abandoned(spark, conf, None, "x") == 0


def test_an_attempt_writes_one_row_per_key_even_when_a_run_id_is_reused(spark, tmp_path):
    """The first row of an attempt is appended when its key is new; a launcher that reuses a run id for a stage it
    already attempted (a retried scheduler task with the same ``--run-id``) still updates that one row."""
    conf = make_conf(tmp_path / "lake")
    ds = dt.date(2026, 1, 3)

    def fails() -> StageResult:
        raise ValueError("boom")

    first = stage_runs.attempt(spark, conf, "sched-run", ds, "train", fails)
    assert first.status == FAILED and isinstance(first.error, ValueError)
    again = stage_runs.attempt(spark, conf, "sched-run", ds, "train", lambda: StageResult(rows_in=7, rows_out=1))
    other = stage_runs.attempt(spark, conf, "sched-run", ds, "topk", lambda: StageResult(rows_in=3))
    assert again.status == other.status == SUCCEEDED
    rows = lakehouse.read_table(spark, conf, PIPELINE_RUNS).orderBy("stage").collect()
    assert [(r["run_id"], r["ds"], r["stage"], r["status"]) for r in rows] == [
        ("sched-run", ds, "topk", SUCCEEDED), ("sched-run", ds, "train", SUCCEEDED)]
    train = rows[1]
    assert (train["rows_in"], train["rows_out"], train["detail"]) == (7, 1, "")
    assert train["finished_at"] >= train["started_at"]
    # A run id minted here skips the lookup for keys it has not written, not for one it has.
    minted = stage_runs.new_run_id()
    for _ in range(2):
        assert stage_runs.attempt(spark, conf, minted, ds, "migrate", fails).status == FAILED
    mine = lakehouse.read_table(spark, conf, PIPELINE_RUNS).where(f"run_id = '{minted}'").collect()
    assert [(r["stage"], r["status"]) for r in mine] == [("migrate", FAILED)]


# ---- object-store roots: the Delta lock (run here on a local folder, within one JVM) ------------------------------
def _attempt(lock: RunLock, start: threading.Barrier) -> bool:
    start.wait()
    try:
        lock.acquire()
    except PipelineLocked:
        return False
    return True


def test_racing_contenders_never_share_the_delta_lock(spark, tmp_path):
    """Rounds of 3 threads acquiring at once: one winner on a free lock, none on a held one, never two."""
    conf = make_conf(tmp_path / "lake")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONTENDERS) as pool:
        for r in range(ROUNDS):
            held = r % 6 == 5  # every sixth round someone already holds the lock
            owner = RunLock(spark, conf, f"owner-{r}", backend="delta").acquire() if held else None
            start = threading.Barrier(CONTENDERS)
            locks = [RunLock(spark, conf, f"round{r}-c{i}", backend="delta") for i in range(CONTENDERS)]
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


def test_stale_delta_owners_are_taken_over_and_live_ones_refuse(spark, tmp_path):
    conf = make_conf(tmp_path / "lake", "pipeline.lock_stale_hours=2")
    lock = RunLock(spark, conf, "me", backend="delta")
    assert process_start(os.getpid()) is not None  # Linux /proc: the pid reuse guard is active here
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=3)

    # A live owner on this host (this very process, as another thread's run would be): refused, owner named.
    _plant(spark, lock)
    with pytest.raises(PipelineLocked, match=rf"run planted-run \(pid {os.getpid()} on {socket.gethostname()}"):
        lock.acquire()
    # The same live owner, past lock_stale_hours (a long backfill): still refused, its process decides.
    _plant(spark, lock, acquired_at=old)
    with pytest.raises(PipelineLocked, match="planted-run"):
        lock.acquire()
    # Another host, recent: its process cannot be checked from here, so it holds until the stale age.
    _plant(spark, lock, host="elsewhere", pid=1)
    with pytest.raises(PipelineLocked, match="planted-run"):
        lock.acquire()
    # A live pid on this host but no start time recorded, recent: it may be the owner, so it holds for now.
    _plant(spark, lock, pid_started=None)
    with pytest.raises(PipelineLocked, match="planted-run"):
        lock.acquire()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_owners = {
        "dead pid on this host": {"pid": dead.pid, "pid_started": None},
        "pid reused by another process": {"pid_started": process_start(os.getpid()) - 1},
        "live pid, start time unknown, older than lock_stale_hours": {"pid_started": None, "acquired_at": old},
        "other host, older than lock_stale_hours": {"host": "elsewhere", "pid": 1, "acquired_at": old},
    }
    for why, owner in stale_owners.items():
        _plant(spark, lock, **owner)
        with lock:
            holder = lock.holder()
            assert (holder["token"], holder["run_id"]) == (lock.token, "me"), why
            assert lock.taken_over["token"] == "planted", why  # the killed run, for its running rows
        assert lock.holder() is None, why
        lock = RunLock(spark, conf, "me", backend="delta")


def test_local_roots_take_the_file_lock_and_object_stores_the_delta_lock(tmp_path):
    assert RunLock(None, make_conf(tmp_path / "a"), "x").backend == "file"
    assert RunLock(None, make_conf(f"file://{tmp_path}/b"), "x").path == str(tmp_path / "b" / "_pipeline")
    s3 = RunLock(None, make_conf("s3a://bucket/lake"), "x")  # type: ignore[arg-type]
    assert (s3.backend, s3.path) == ("delta", "s3a://bucket/lake/_pipeline/run_lock")
    assert not Path("s3a:").exists()
