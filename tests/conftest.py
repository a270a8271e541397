"""Shared fixtures: one real local Spark session with Delta, a fresh lakehouse per test, a local Ray."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from driftrec.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
ML_LATEST_SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"


def make_conf(root: Path, *extra: str) -> Config:
    """A config for an isolated lakehouse; a unique database keeps catalog names from colliding across tests."""
    return load_config(
        overrides=[
            f'lakehouse.root="{root}"',
            f'lakehouse.database="t_{uuid.uuid4().hex[:10]}"',
            "spark.shuffle_partitions=2",
            *extra,
        ]
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
