"""A local Ray started by ``ensure_ray``: its workers run the driver's code, and a driver killed with SIGKILL leaves
no Ray process behind (issue 20, item 7). Real Ray, a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ray_trainers import reaper

ROOT = Path(__file__).resolve().parents[1]
DRIVER = textwrap.dedent("""
    import os, time
    import ray
    from ray_trainers.session import ensure_ray
    ensure_ray(num_cpus=1, include_dashboard=False)
    @ray.remote
    def pid():
        import ray_trainers
        return os.getpid(), ray_trainers.__file__
    worker, code = ray.get(pid.remote())
    print("READY", worker, code, flush=True)
    time.sleep(600)
""")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the reaper reads /proc (Linux only)")
def test_a_killed_drivers_ray_processes_are_stopped(tmp_path):
    import ray

    # The driver finds the code through PYTHONPATH; the workers must import that same checkout.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        line = driver.stdout.readline()
        assert line.startswith("READY"), line
        worker, code = int(line.split()[1]), Path(line.split()[2])
        assert code.resolve() == (ROOT / "ray_trainers" / "__init__.py").resolve()
        time.sleep(2)  # the reaper notes descendants once a second
        ray_dir = str(Path(ray.__file__).resolve().parent)
        procs = reaper.ray_descendants(driver.pid, ray_dir)
        # gcs_server, raylet, its agents and the worker that ran the task: what outlived a killed driver before.
        assert worker in procs and len(procs) >= 4, procs
        assert any("Agent" in reaper._cmdline(p) for p in procs), [reaper._cmdline(p) for p in procs]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(reaper._stat(p) for p in procs):
            time.sleep(0.5)
        left = {p: reaper._cmdline(p) for p in procs if reaper._stat(p)}
        assert not left, f"still running 20 s after the driver was killed: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()


def test_stop_never_signals_a_reused_pid():
    """A pid noted with another start time is someone else's process now: it must not be signalled."""
    me = os.getpid()
    start = reaper._stat(me)[1]
    assert reaper.stop({me: start + 1}, grace_s=0.1) == []
    assert reaper._stat(me) is not None
