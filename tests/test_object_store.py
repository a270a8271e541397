"""The lakehouse on a real object store: ingest, MERGE and the migrate-only nightly on an ``s3a://bucket/...`` root.

The store is moto's S3 server (``moto[server]``, a test extra) on a free loopback port; Spark reaches it the way it
reaches S3, through Hadoop's S3A client (``hadoop-aws`` from Maven, asked for in the config's ``spark.jars.packages``
next to Delta) with the endpoint, path-style access, plain HTTP and dummy keys set in ``[spark.conf]``. Delta picks
its ``S3SingleDriverLogStore`` for ``s3a://`` by default: commits are atomic only within one driver, which is what
this test has (one session); concurrent writers on real S3 need ``S3DynamoDBLogStore`` (see driftrec/runlock.py).

The Spark side runs in a child process: PySpark starts one JVM per process and its jars are fixed then, so a
session built here after the suite's shared ``spark`` fixture (no hadoop-aws) could not load S3A, and one built here
first would hand its jars and confs to every later test. The child writes what it saw to a JSON file; this process
asserts on it and on the bucket's listing (boto3) and reads a table's folder through :meth:`Lakehouse.is_dir`
(pyarrow's S3 filesystem, ``s3a://`` mapped to ``s3://``).

Only the AWS SDK modules S3A uses are fetched, not the SDK's 686 MB ``bundle`` jar hadoop-aws depends on: about 18 MB
in 49 jars with hadoop-aws, once per Ivy cache. What the bundle adds that they lack is its shaded httpclient, which
S3A uses only for ``fs.s3a.ssl.channel.mode``: nothing here uses TLS.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

HADOOP = "3.5.0"  # the hadoop-client jars pyspark 4.2 ships: hadoop-aws must be the same release
AWS_SDK = "2.35.4"  # the SDK v2 release hadoop-aws 3.5.0 is built against (hadoop-project's aws-java-sdk-v2.version)
PACKAGES = ",".join([
    f"org.apache.hadoop:hadoop-aws:{HADOOP}",
    f"software.amazon.awssdk:s3:{AWS_SDK}",
    f"software.amazon.awssdk:s3-transfer-manager:{AWS_SDK}",
])
# In the default run: ~2.7 min on a 2-core machine (a JVM of its own, ingest, a MERGE, the nightly), ~18 MB of jars.
pytestmark = pytest.mark.slow
START = dt.date(2026, 1, 1)
NIGHT = START + dt.timedelta(days=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 for this module, stopped after; ``(endpoint, boto3 client)``."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        yield endpoint, client
    finally:
        server.stop()


def _config_toml(root: str, database: str, endpoint: str) -> str:
    conf = {
        "spark.jars.packages": PACKAGES,
        # hadoop-aws depends on the SDK's bundle jar (686 MB): S3A needs only the modules above.
        "spark.jars.excludes": "software.amazon.awssdk:bundle",
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.access.key": "testing",
        "spark.hadoop.fs.s3a.secret.key": "testing",
    }
    lines = [
        "[lakehouse]", f'root = "{root}"', f'database = "{database}"',
        "[pipeline]", 'stages = ["migrate"]',
        "[spark]", "shuffle_partitions = 2", 'driver_memory = "2g"',
        "[spark.conf]", *(f'"{k}" = "{v}"' for k, v in conf.items()),
    ]
    return "\n".join(lines) + "\n"


def test_ingest_merge_and_nightly_migrate_on_an_s3a_root(s3, tmp_path, monkeypatch):
    endpoint, client = s3
    bucket = f"driftrec-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    root, night_root = f"s3a://{bucket}/lake", f"s3a://{bucket}/night"
    config = tmp_path / "driftrec.toml"
    config.write_text(_config_toml(root, f"t_{uuid.uuid4().hex[:10]}", endpoint))
    cwd, tmp, out = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "seen.json"
    cwd.mkdir()
    tmp.mkdir()
    # The child's cwd is an empty folder (a stray relative "s3a:" folder would land there), its temp dir is this
    # test's (the Derby metastore of a remote root goes under it, see Lakehouse.metastore_dir).
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_object_store", str(config), night_root, str(tmp_path / "ml"), str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"child failed ({time.monotonic() - t0:.0f} s):\n{proc.stderr[-6000:]}"
    seen = json.loads(out.read_text())
    print(f"child: {time.monotonic() - t0:.0f} s; cumulative seconds: {seen['seconds']}")

    # Ingest on the s3a root: 6 good ratings in, 6 bad ones quarantined; a rerun inserts nothing.
    assert (seen["inserted"], seen["quarantined"], seen["events"], seen["again_inserted"]) == (6, 6, 6, 0)
    assert seen["table_path"] == f"{root}/events"
    assert seen["catalog_location"] == seen["detail_location"] == f"{root}/events"  # registered at its s3a place
    # MERGE: one title rewritten in place, read back by path.
    assert seen["merge"] == [0, 1] and seen["title"] == "Heat"
    # The nightly, migrate only, with the run lock and its bookkeeping.
    assert seen["stages"] == [["migrate", "succeeded"]]
    assert seen["rows_in"] == seen["night_events"] > 0
    assert seen["pipeline_runs"] == [["migrate", "succeeded"]]
    assert seen["lock_free"] and seen["user_interest_rows"] > 0

    # The objects are in the bucket, under the roots' prefixes.
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}
    for table in ("lake/events", "lake/items", "night/_pipeline/run_lock", "night/user_interest",
                  "night/pipeline_runs"):
        assert f"{table}/_delta_log/00000000000000000000.json" in keys, sorted(keys)[:40]
    assert any(k.startswith("lake/events/") and k.endswith(".parquet") for k in keys)
    # pyarrow (Lakehouse.filesystem: s3a:// -> s3://) sees the same folders.
    from driftrec.lakehouse import Lakehouse

    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    night = Lakehouse(night_root)
    assert night.is_dir(night.path("_pipeline", "run_lock", "_delta_log"))
    assert not night.exists(night.path("no_such_table"))
    # Nothing went to a local folder named after the scheme; Derby's metastore is under the temp dir.
    for d in (cwd, tmp_path, REPO):
        assert not [p.name for p in d.iterdir() if p.name.startswith("s3a")], d
    assert [p.name for p in tmp.iterdir() if p.name.startswith("driftrec-metastore-")]


def _child(config: str, night_root: str, ml_dir: str, out: str) -> None:
    """Run in the child process: the jobs on the s3a roots; what they wrote, as read back, into ``out``."""
    import pandas as pd

    from driftrec import lakehouse
    from driftrec.config import SyntheticConfig, load_config
    from driftrec.runlock import RunLock
    from driftrec.spark import build_spark
    from driftrec.synthetic import generate
    from driftrec.tables import EVENTS, ITEMS, PIPELINE_RUNS, USER_INTEREST
    from jobs.ingest import IngestJob
    from jobs.nightly import NightlyJob
    from tests.test_ingest import NOW, movielens_csv
    from tests.transfer_helpers import load

    t0 = time.monotonic()
    conf = load_config(config)
    spark = build_spark(conf, app_name="driftrec-object-store", local=True)
    seen: dict = {"table_path": conf.table_path("events"), "seconds": {"session": time.monotonic() - t0}}
    try:
        job = IngestJob(spark, conf, now=NOW)
        report = job.run(job.plan(movielens=str(movielens_csv(Path(ml_dir)))))
        seen["inserted"] = report.total("rows_inserted", "events")
        seen["quarantined"] = report.total("rows_quarantined", "events")
        seen["events"] = lakehouse.read_table(spark, conf, EVENTS).count()
        seen["detail_location"] = spark.sql(f"DESCRIBE DETAIL {conf.table_name('events')}").first()["location"]
        seen["catalog_location"] = lakehouse._catalog_location(spark, conf, EVENTS)
        lakehouse._check_registered_location(spark, conf, EVENTS)
        seen["seconds"]["ingest"] = time.monotonic() - t0
        seen["again_inserted"] = job.run(job.plan(movielens=ml_dir)).total("rows_inserted", "events")

        seen["seconds"]["ingest_again"] = time.monotonic() - t0
        items = lakehouse.read_table(spark, conf, ITEMS)
        renamed = items.where("item_id = 10").withColumn("title", items["title"].substr(1, 4))
        res = lakehouse.merge_upsert(spark, conf, ITEMS, renamed, update_when="true")
        seen["merge"] = [res.inserted, res.updated]
        seen["title"] = lakehouse.read_table(spark, conf, ITEMS).where("item_id = 10").first()["title"]

        seen["seconds"]["merge"] = time.monotonic() - t0
        # A second lakehouse: its own root and its own catalog database (the check above refuses a shared one).
        night = load_config(config, overrides=[f'lakehouse.root="{night_root}"',
                                               f'lakehouse.database="{conf.lakehouse.database}_night"'])
        data = generate(SyntheticConfig(users=30, items=20, categories=3, days=3, seed=5,
                                        start_date=START.isoformat()))
        load(spark, night, data.events, data.items)
        seen["seconds"]["load"] = time.monotonic() - t0
        rep = NightlyJob(spark, night).run(NIGHT)
        seen["seconds"]["nightly"] = time.monotonic() - t0
        seen["stages"] = [[r.stage, r.status] for r in rep.records]
        seen["rows_in"] = rep.records[0].result.rows_in if rep.records and rep.records[0].result else None
        seen["night_events"] = int((pd.to_datetime(data.events["timestamp"], unit="s").dt.date == NIGHT).sum())
        seen["pipeline_runs"] = [[r["stage"], r["status"]]
                                 for r in lakehouse.read_table(spark, night, PIPELINE_RUNS).collect()]
        seen["lock_free"] = RunLock(spark, night, "probe").holder() is None
        seen["user_interest_rows"] = lakehouse.read_table(spark, night, USER_INTEREST).count()
    finally:
        Path(out).write_text(json.dumps(seen))
        spark.stop()


if __name__ == "__main__":
    _child(*sys.argv[1:])
