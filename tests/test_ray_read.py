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
