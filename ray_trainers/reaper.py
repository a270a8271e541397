"""Stops a local Ray's processes when the driver that started them is killed.

A local ``ray.init()`` starts gcs_server, the raylet, its agents and workers as the driver's descendants. When the
driver ends normally, ``ray.shutdown`` (or its atexit hook) stops them; when it is killed (``kill -9``, the OOM
killer, a scheduler's timeout), the raylet's agents outlive it by a minute or more, holding memory and ports that the
next run of the stage then competes with. This module runs as a small separate process beside such a driver: it
notes the driver's Ray descendants every second and, once the driver is gone, stops the ones still running.

Linux only (it reads ``/proc``); elsewhere :func:`start` does nothing. Processes are named by pid *and* start time,
so a reused pid is never signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
_started_for: int | None = None  # the driver pid a reaper already watches (one per driver process)
_process: subprocess.Popen | None = None  # kept referenced: the reaper outlives this module by design


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_descendants(driver: int, ray_dir: str) -> dict[int, int]:
    """{pid: start time} of the driver's descendants that are Ray's: worker titles ``ray::...`` or anything run
    from Ray's package folder (gcs_server, raylet, agents). Other children (Spark's JVM) are left alone."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                parents.setdefault(st[0], []).append(int(entry.name))
                starts[int(entry.name)] = st[1]
    found: dict[int, int] = {}
    todo = list(parents.get(driver, []))
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        cmd = _cmdline(pid)
        if pid != os.getpid() and (cmd.startswith("ray::") or ray_dir in cmd):  # not the reaper (ray_dir is its arg)
            found[pid] = starts[pid]
    return found


def stop(processes: dict[int, int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM, then after ``grace_s`` SIGKILL, each process still running with the same start time; the pids
    signalled."""
    def alive() -> list[int]:
        return [pid for pid, start in processes.items() if (_stat(pid) or (0, -1))[1] == start]

    hit = alive()
    for pid in hit:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return hit


def watch(driver: int, ray_dir: str, interval_s: float = 1.0) -> list[int]:
    """Until the driver ends, note its Ray descendants; then stop those still running. Returns the pids stopped."""
    driver_start = (_stat(driver) or (0, None))[1]
    seen: dict[int, int] = {}
    while (_stat(driver) or (0, None))[1] == driver_start and driver_start is not None:
        current = ray_descendants(driver, ray_dir)
        # Ones that ended on their own are dropped; the start time guards a pid reused by an unrelated process.
        seen = {pid: start for pid, start in seen.items() if (_stat(pid) or (0, -1))[1] == start}
        seen.update(current)
        time.sleep(interval_s)
    return stop(seen)


def start() -> bool:
    """Start a reaper for this process (once per process) when the platform has ``/proc``. Its own session, so a
    signal to the driver's process group does not take it down before it has done its work."""
    global _started_for, _process
    if _started_for == os.getpid() or not (PROC / "self" / "stat").exists():
        return False
    import ray

    ray_dir = str(Path(ray.__file__).resolve().parent)
    _process = subprocess.Popen(
        [sys.executable, "-m", "ray_trainers.reaper", str(os.getpid()), ray_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    _started_for = os.getpid()
    return True


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
