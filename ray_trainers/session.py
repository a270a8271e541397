"""Starting or joining Ray, the one way every job and test does it.

A local ``ray.init()`` waits a fixed 30 s for its raylet to register (not configurable in Ray 2.60); on a busy
machine (a nightly beside Spark, a CI box) that window is missed now and then and the whole stage fails. A local
start is therefore retried; joining a named cluster is not (its failure is real and says so).
"""

from __future__ import annotations

import logging
import time

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


def ensure_ray(address: str | None = None, *, attempts: int = 3, **init_kwargs) -> None:
    """``ray.init`` unless Ray is already up; a local start (no ``address``) is tried up to ``attempts`` times.

    A local start installs :func:`quiet_worker_logs` in its workers unless the caller passes its own runtime env."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **init_kwargs)
        return
    init_kwargs.setdefault("runtime_env", {"worker_process_setup_hook": quiet_worker_logs})
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if attempt == attempts:
                raise
            log.warning("local Ray did not start (attempt %d of %d: %s); retrying", attempt, attempts, exc)
            time.sleep(2 * attempt)
