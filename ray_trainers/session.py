"""Starting or joining Ray, the one way every job and test does it.

A local ``ray.init()`` waits a fixed 30 s for its raylet to register (not configurable in Ray 2.60); on a busy
machine (a nightly beside Spark, a CI box) that window is missed now and then and the whole stage fails. A local
start is therefore retried; joining a named cluster is not (its failure is real and says so).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


class _DropStateApiNoise(logging.Filter):
    """Ray Train's placement-group cleaner asks the state API (served by the dashboard) every second whether the
    controller lives; a local Ray without a dashboard answers with an error, logged as a warning each second."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to query Ray Train Controller actor state")


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of a local start (``worker_process_setup_hook``)."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(
        _DropStateApiNoise())


def _driver_code_path() -> str:
    """PYTHONPATH for a local Ray's workers: the folder this driver imports driftrec's packages from, first. Workers
    then run the driver's code, not whatever checkout the environment's editable install points at (two checkouts
    sharing one virtualenv, or a checkout run without installing)."""
    code = str(Path(__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != code]
    return os.pathsep.join([code, *rest])


def _start_reaper() -> None:
    """A local Ray's processes are this driver's; a reaper stops them if the driver is killed (see reaper.py)."""
    from ray_trainers import reaper

    try:
        reaper.start()
    except OSError as exc:  # never fail a stage for want of its cleanup helper
        log.warning("could not start the Ray reaper: %s", exc)


def started_local_head() -> bool:
    """True when this process started the Ray it is connected to (a local ``ray.init()``), False when it joined a
    cluster: under ``ray job submit`` or beside a ``ray start`` on the same box, ``ray.init()`` without an address
    joins that cluster, so "no address" does not tell the two apart."""
    import ray

    if not ray.is_initialized():
        return False
    try:  # no public API says it; the node object of the driver's own process does
        node = ray._private.worker._global_node
        return bool(node is not None and node.is_head())
    except AttributeError:  # a Ray without this private attribute: assume a cluster (the safe answer)
        return False


def ensure_ray(address: str | None = None, *, attempts: int = 3, **init_kwargs) -> None:
    """``ray.init`` unless Ray is already up; a local start (no ``address``) is tried up to ``attempts`` times.

    A local start installs :func:`quiet_worker_logs` in its workers and puts this driver's code first on their path
    (:func:`_driver_code_path`) unless the caller passes its own runtime env,
    and a reaper that stops its processes if this driver is killed."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **init_kwargs)
        return
    init_kwargs.setdefault("runtime_env", {"worker_process_setup_hook": quiet_worker_logs,
                                           "env_vars": {"PYTHONPATH": _driver_code_path()}})
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            _start_reaper()
            return
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if attempt == attempts:
                raise
            log.warning("local Ray did not start (attempt %d of %d: %s); retrying", attempt, attempts, exc)
            time.sleep(2 * attempt)
