"""Starting or joining Ray, the one way every job and test does it.

A local ``ray.init()`` waits a fixed 30 s for its raylet to register (not configurable in Ray 2.60); on a busy
machine (a nightly beside Spark, a CI box) that window is missed now and then and the whole stage fails. A local
start is therefore retried; joining a named cluster is not (its failure is real and says so).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, attempts: int = 3, **init_kwargs) -> None:
    """``ray.init`` unless Ray is already up; a local start (no ``address``) is tried up to ``attempts`` times."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **init_kwargs)
        return
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
