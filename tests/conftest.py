"""Shared fixtures: one real local Spark session with Delta, a fresh lakehouse per test, a local Ray."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from driftrec.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
ML_LATEST_SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"

# Every JVM the tests start (the session's, and those of child `driftrec`/`spark-submit` processes) compiles with C1
# only: on test-sized data the C2 compiler burns most of a core for no shorter run (measured: same wall, 69% vs 92% busy).
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")

# The longest files first, so that with xdist workers (DRIFTREC_TEST_WORKERS in infra/local/test.sh) the long pole
# starts at once; in one process the order is harmless (stable sort).
LONGEST_FIRST = (
    "test_nightly.py", "test_migration_engine.py", "test_migration_bulk.py", "test_transfer_learning.py",
    "test_migration_synthetic.py", "test_evaluation.py", "test_topk.py", "test_runlock.py", "test_forget_user.py",
    "test_lakehouse_paths.py", "test_object_store.py",
)


HEAVY_ENV = "DRIFTREC_HEAVY_TESTS"


def pytest_configure(config):
    # The slowest tests, printed at the end of every run (CI's log included), so the suite's time has a map.
    if not config.getoption("durations", None):
        config.option.durations = 30
        config.option.durations_min = 5.0
    config.addinivalue_line(
        "markers",
        f"heavy: tests that rerun whole jobs: the evaluation job end to end, whole-night robustness scenarios (kill "
        f"mid-write, late-event replay, lock refusal, missing checkpoint), top-k reruns and candidate comparisons, "
        f"at ~1 min per night on test data; opt-in with "
        f"{HEAVY_ENV}=1 until a night costs seconds (speed issue), so the suite fits CI's time",
    )


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    if os.environ.get(HEAVY_ENV) != "1":
        skip = pytest.mark.skip(reason=f"heavy scenario: set {HEAVY_ENV}=1 to run it (several extra nights)")
        for item in items:
            if "heavy" in item.keywords:
                item.add_marker(skip)


def make_conf(root: Path, *extra: str) -> Config:
    """A config for an isolated lakehouse; a unique database keeps catalog names from colliding across tests."""
    return load_config(
        overrides=[
            f'lakehouse.database="t_{uuid.uuid4().hex[:10]}"',
            "spark.shuffle_partitions=2",
            *extra,
        ],
        values={"lakehouse.root": str(root)},
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from driftrec.spark import build_spark

    root = tmp_path_factory.mktemp("spark_session")
    boot = load_config(
        overrides=[f'lakehouse.root="{root}"', "spark.shuffle_partitions=2", 'spark.driver_memory="4g"']
    )
    session = build_spark(boot, app_name="driftrec-tests", local=True)
    yield session
    session.stop()


@pytest.fixture
def conf(tmp_path) -> Config:
    return make_conf(tmp_path / "lakehouse")
