"""Ray Data reads the training sequences as many Parquet files (as a large night writes them).

Ray 2.60 lists such a read from several threads (driver and read tasks) that each import fsspec's HTTP filesystem.
Without aiohttp that import fails, and a thread racing another's failing import raised a plain ``ImportError``
Ray does not catch: training failed on a 10M-event lakehouse (16 sequence files), and a 16-file read failed the same
way in a bare script. aiohttp is therefore a dependency; this keeps the read (and the dependency) honest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCRIPT = textwrap.dedent("""
    import glob, sys
    import ray
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
    ds = ray.data.read_parquet(files).materialize()
    print("rows", ds.count(), "sum", int(ds.sum("x")))
    ray.shutdown()
""")


def test_fsspec_http_filesystem_imports():
    from fsspec.implementations.http import HTTPFileSystem

    assert HTTPFileSystem.protocol[0] == "http"


def test_ray_reads_many_parquet_files(tmp_path):
    for i in range(24):
        pq.write_table(pa.table({"x": list(range(i * 10, i * 10 + 10))}), tmp_path / f"part-{i:03d}.parquet")
    # A fresh interpreter: the import race happens only while nothing has imported the module yet.
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"rows 240 sum {sum(range(240))}" in out.stdout.splitlines(), out.stdout


# --- the driver read of a small snapshot ------------------------------------------------------------------------------

def _sequences(spark, conf, days: list[str], users: int):
    import datetime as dt

    from driftrec import lakehouse, sqltext
    from driftrec.tables import TRAINING_SEQUENCES

    rows = [(dt.date.fromisoformat(d), u, c, "valid" if c == 0 and u % 3 == 0 else "train", [u, u + 1, c],
             [100 * u, 100 * u + 1, 100 * u + 2], ["a"] if u % 2 else [], [1.0] if u % 2 else [])
            for d in days for u in range(users) for c in range(2)]
    df = spark.createDataFrame(rows, TRAINING_SEQUENCES.schema).repartition(3)
    for d in days:
        lakehouse.replace_where(spark, conf, TRAINING_SEQUENCES, df.where(f"ds = '{d}'"), sqltext.equals("ds", d),
                                metrics=False)
    return lakehouse.table_version(spark, conf, TRAINING_SEQUENCES)


def test_a_small_snapshot_read_by_the_driver_equals_the_ray_data_read(spark, tmp_path):
    """Same rows as the Ray Data read, one in-memory block per worker; the bytes add up to the partition's files;
    past the size limit, with a limit of 0 or with no size known, Ray Data reads (unmaterialized when asked)."""
    import os

    import ray

    from driftrec import lakehouse
    from driftrec.tables import TRAINING_SEQUENCES
    from ray_trainers.data import (
        SEQUENCE_COLUMNS,
        _paths,
        read_training_sequences,
        read_training_sequences_in_driver,
        training_dataset,
    )
    from ray_trainers.session import ensure_ray
    from tests.conftest import make_conf

    conf = make_conf(tmp_path / "lh")
    version = _sequences(spark, conf, ["2026-01-01", "2026-01-02"], users=40)
    files = lakehouse.snapshot_files(conf, TRAINING_SEQUENCES, version, {"ds": "2026-01-02"})
    size = lakehouse.snapshot_bytes(conf, TRAINING_SEQUENCES, version, {"ds": "2026-01-02"})
    assert len(files) >= 2 and size == sum(os.path.getsize(f.removeprefix("file://")) for f in files)
    # One filesystem for the table's URIs, the paths inside it as pyarrow would resolve each.
    uris = ["file://" + f if f.startswith("/") else f for f in files]
    assert _paths(uris)[1] == [f.removeprefix("file://") for f in files]

    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        by_ray = read_training_sequences(files).to_pandas()
        local = read_training_sequences_in_driver(uris, blocks=3)
        by_driver = local.to_pandas()
        assert local.num_blocks() == 3
        assert list(by_driver.columns) == SEQUENCE_COLUMNS == list(by_ray.columns)
        key = ["user_id", "chunk"]
        assert len(by_driver) == 40 * 2 - 14 == len(by_ray)  # the 14 valid rows (users 0, 3, .., 39) left out
        a, b = by_driver.sort_values(key).reset_index(drop=True), by_ray.sort_values(key).reset_index(drop=True)
        for col in SEQUENCE_COLUMNS:
            assert [list(v) if hasattr(v, "__len__") else v for v in a[col]] == \
                   [list(v) if hasattr(v, "__len__") else v for v in b[col]], col

        driver = type(local)
        assert type(training_dataset(files, size, size, 2, materialize=False)) is driver
        for total, limit in [(size, size - 1), (size, 0), (0, size)]:
            assert type(training_dataset(files, total, limit, 2, materialize=False)) is not driver, (total, limit)
    finally:
        ray.shutdown()
