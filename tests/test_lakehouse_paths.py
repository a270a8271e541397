"""Lakehouse roots as URIs: every table and side folder built by string, never through pathlib for a URI.

The first half is pure Python (no Spark): path building for each scheme a root may have. The second half runs real
jobs (ingest, MERGE, the nightly migrate stage) on a lakehouse whose root is a ``file://`` URI.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pytest

from driftrec import lakehouse
from driftrec.config import SyntheticConfig
from driftrec.lakehouse import Lakehouse, join, normalize_root, same_location
from driftrec.tables import ALL_TABLES, EVENTS, ITEMS, PIPELINE_RUNS
from tests.conftest import make_conf

REMOTE = {
    "s3a://bucket/lake": ("s3a://bucket/lake", "s3://bucket/lake"),
    "s3a://bucket/lake/": ("s3a://bucket/lake", "s3://bucket/lake"),
    "s3a://bucket": ("s3a://bucket", "s3://bucket"),
    "abfss://container@account.dfs.core.windows.net/prefix":
        ("abfss://container@account.dfs.core.windows.net/prefix", "abfs://container@account.dfs.core.windows.net/prefix"),
    "gs://bucket/deep/prefix": ("gs://bucket/deep/prefix", "gs://bucket/deep/prefix"),
    "hdfs://namenode:8020/prefix": ("hdfs://namenode:8020/prefix", "hdfs://namenode:8020/prefix"),
}


def _side_paths(lake: Lakehouse) -> dict[str, str]:
    return {
        "models": lake.models_dir("sasrec"),
        "model_version": lake.model_version_dir("sasrec", 7),
        "topics": lake.topic_model_dir("kmeans8__minilm"),
        "pipeline": lake.pipeline_dir(),
        "run_lock": lake.run_lock_path(),
        "evaluation": lake.evaluation_dir(),
        "demo": lake.demo_source_dir(),
    }


def _no_damage(path: str, root: str) -> None:
    assert path.startswith(root + "/"), (path, root)
    rest = path[len(root):]
    assert "//" not in rest and ":" not in rest, path
    assert os.getcwd() not in path, path


@pytest.mark.parametrize("given", sorted(REMOTE))
def test_remote_roots_keep_their_scheme_and_authority(given):
    root, pyarrow_root = REMOTE[given]
    conf = make_conf(given)  # type: ignore[arg-type]
    lake = Lakehouse.of(conf)
    assert lake.root == root and not lake.is_local
    for spec in ALL_TABLES:
        path = conf.table_path(spec.logical)
        assert path == f"{root}/{getattr(conf.tables, spec.logical)}"
        _no_damage(path, root)
    sides = _side_paths(lake)
    for path in sides.values():
        _no_damage(path, root)
    assert sides["model_version"] == f"{root}/models/sasrec/v00007"
    assert sides["run_lock"] == f"{root}/_pipeline/run_lock"
    assert lake.ray_results_dir() == f"{pyarrow_root}/_ray_results"
    # Derby needs a local folder: one under the temp dir, keyed by the root, never a folder named after the scheme.
    meta = lake.metastore_dir()
    assert meta.is_absolute() and "s3a:" not in str(meta) and meta != Lakehouse("s3a://other/lake").metastore_dir()
    assert meta == Lakehouse(given).metastore_dir()
    with pytest.raises(NotImplementedError, match=r"the demo's files needs a local filesystem path.*://"):
        lake.local_path(sides["demo"], operation="the demo's files")


def test_the_old_bug_is_gone():
    """``Path(root).resolve()`` made ``s3a://bucket/lake`` into ``<cwd>/s3a:/bucket/lake``."""
    path = make_conf("s3a://bucket/lake").table_path("events")  # type: ignore[arg-type]
    assert path == "s3a://bucket/lake/events"
    assert "s3a:/bucket" not in path.replace("s3a://", "") and not path.startswith(os.getcwd())


@pytest.mark.parametrize("spelling", ["file://{p}", "file://{p}/", "file:{p}", "file://localhost{p}"])
def test_file_uris_stay_uris_and_map_to_the_local_folder(tmp_path, spelling):
    given = spelling.format(p=tmp_path / "lake")
    lake = Lakehouse(given)
    assert lake.root == f"file://{tmp_path}/lake" and lake.is_local and lake.scheme == "file"
    assert lake.local_path() == tmp_path / "lake"
    assert lake.local_path(lake.model_version_dir("m", 1)) == tmp_path / "lake" / "models" / "m" / "v00001"
    assert lake.ray_results_dir() == str(tmp_path / "lake" / "_ray_results")  # Ray gets a plain local path
    assert lake.metastore_dir() == tmp_path / "lake"
    assert make_conf(given).table_path("events") == f"file://{tmp_path}/lake/events"  # type: ignore[arg-type]


def test_plain_local_roots_become_absolute_and_stay_plain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lake = Lakehouse("rel/lake")
    assert lake.root == str(tmp_path / "rel" / "lake") and lake.scheme is None and lake.is_local
    assert make_conf("rel/lake").table_path("items") == str(tmp_path / "rel" / "lake" / "items")  # type: ignore
    assert Lakehouse(str(tmp_path) + "/").root == str(tmp_path)
    assert lake.local_path(lake.pipeline_dir()) == tmp_path / "rel" / "lake" / "_pipeline"


def test_join_and_bad_roots():
    assert join("s3a://b", "a/b", "c") == "s3a://b/a/b/c"
    assert join("/x", "y") == "/x/y"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        join("s3a://b/p", "../escape")
    with pytest.raises(ValueError, match="lakehouse.root is empty"):
        normalize_root("  ")
    with pytest.raises(ValueError, match=r"expected s3a://<authority>/<prefix>"):
        normalize_root("s3a:bucket/lake")
    with pytest.raises(ValueError, match="not a local path"):
        Lakehouse("file://otherhost/x")


def test_hadoop_spelling_of_file_uris():
    from driftrec.lakehouse import hadoop_spelling

    for spelling in ("file:///data/lake/x", "file:/data/lake/x", "file://localhost/data/lake/x/"):
        assert hadoop_spelling(spelling) == "file:/data/lake/x"
    assert hadoop_spelling("/data/lake/x") == "/data/lake/x"
    assert hadoop_spelling("s3a://b/lake/x") == "s3a://b/lake/x"


def test_locations_compare_as_places():
    assert same_location("file:/data/lake/events", "/data/lake/events")
    assert same_location("file:///data/lake/events/", "file:/data/lake/events")
    assert same_location("s3a://b/lake/events/", "s3a://b/lake/events")
    assert not same_location("file:/data/lake/events", "/data/other/events")
    assert not same_location("s3a://b/lake/events", "/b/lake/events")


# ---- real jobs on a file:// root -----------------------------------------------------------------------------------
def test_ingest_merge_and_nightly_migrate_on_a_file_uri_root(spark, tmp_path, monkeypatch):
    from driftrec.runlock import RunLock
    from driftrec.synthetic import generate
    from jobs.ingest import IngestJob
    from jobs.nightly import SUCCEEDED, NightlyJob
    from tests.test_ingest import NOW, movielens_csv
    from tests.transfer_helpers import load

    monkeypatch.chdir(tmp_path)  # a stray relative "file:" folder would land here
    local = tmp_path / "lake"
    conf = make_conf(f"file://{local}", 'pipeline.stages=["migrate"]')  # type: ignore[arg-type]
    assert conf.table_path("events") == f"file://{local}/events"

    # Ingest: real files in, Delta tables at the URI's local folder.
    job = IngestJob(spark, conf, now=NOW)
    report = job.run(job.plan(movielens=str(movielens_csv(tmp_path / "ml"))))
    assert report.total("rows_inserted", "events") == 6 and report.total("rows_quarantined", "events") == 6
    assert (local / "events" / "_delta_log").is_dir() and (local / "items" / "_delta_log").is_dir()
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 6
    location = spark.sql(f"DESCRIBE DETAIL {conf.table_name('events')}").first()["location"]
    assert same_location(location, str(local / "events"))
    # The check reads the catalog's metadata (no DESCRIBE DETAIL query), and it names the same place.
    assert same_location(lakehouse._catalog_location(spark, conf, EVENTS), str(local / "events"))
    lakehouse._check_registered_location(spark, conf, EVENTS)  # file:/x vs file:///x: the same place, no error
    other = make_conf(tmp_path / "other")
    other = other.model_copy(update={"lakehouse": other.lakehouse.model_copy(
        update={"database": conf.lakehouse.database})})
    with pytest.raises(RuntimeError, match="points at .* not at this lakehouse's"):
        lakehouse._check_registered_location(spark, other, EVENTS)
    again = job.run(job.plan(movielens=str(tmp_path / "ml")))
    assert again.total("rows_inserted", "events") == 0  # idempotent on the URI root too

    # MERGE and read back by path.
    items = lakehouse.read_table(spark, conf, ITEMS)
    renamed = items.where("item_id = 10").withColumn("title", items["title"].substr(1, 4))
    res = lakehouse.merge_upsert(spark, conf, ITEMS, renamed, update_when="true")
    assert (res.inserted, res.updated) == (0, 1)
    assert lakehouse.read_table(spark, conf, ITEMS).where("item_id = 10").first()["title"] == "Heat"

    # The nightly migrate stage, lock and bookkeeping included, on a fresh file:// lakehouse with generated events.
    night = make_conf(f"file://{tmp_path}/night", 'pipeline.stages=["migrate"]')  # type: ignore[arg-type]
    start = dt.date(2026, 1, 1)
    data = generate(SyntheticConfig(users=30, items=20, categories=3, days=3, seed=5, start_date=start.isoformat()))
    load(spark, night, data.events, data.items)
    d = start + dt.timedelta(days=1)
    rep = NightlyJob(spark, night).run(d)
    assert [(r.stage, r.status) for r in rep.records] == [("migrate", SUCCEEDED)], rep.summary()
    n_events = int((pd.to_datetime(data.events["timestamp"], unit="s").dt.date == d).sum())
    assert rep.records[0].result.rows_in == n_events > 0
    runs = lakehouse.read_table(spark, night, PIPELINE_RUNS).collect()
    assert [(r["stage"], r["status"]) for r in runs] == [("migrate", SUCCEEDED)]
    assert (tmp_path / "night" / "_pipeline" / "run.lock").is_file()  # a local root's lock: a flock (driftrec.runlock)
    assert RunLock(spark, night, "probe").holder() is None  # released
    assert (tmp_path / "night" / "user_interest" / "_delta_log").is_dir()
    assert not any(p.name.startswith("file:") for p in tmp_path.iterdir()) and not Path("file:").exists()


# ---- table versions from the Delta log, and the ensured-table cache --------------------------------------------
@pytest.mark.parametrize("spelling", ["{p}", "file://{p}"], ids=["plain_path", "file_uri"])
def test_table_versions_match_history(spark, tmp_path, spelling):
    """The listing of ``_delta_log`` gives the version ``history(1)`` gives, through appends, MERGEs, a checkpoint
    (more than 10 commits) and a RESTORE, on a plain path root and a ``file:`` URI root."""
    from delta.tables import DeltaTable

    from tests.migration_helpers import put_events, put_items

    conf = make_conf(spelling.format(p=tmp_path / "lake"))  # type: ignore[arg-type]
    specs = (EVENTS, ITEMS)
    assert lakehouse.table_versions(spark, conf, specs, missing_ok=True) == {"events": None, "items": None}
    with pytest.raises(ValueError, match=r"not a Delta table.*events"):
        lakehouse.table_versions(spark, conf, specs)

    def check() -> dict[str, int]:
        want = {s.logical: DeltaTable.forPath(spark, conf.table_path(s.logical)).history(1).first()["version"]
                for s in specs}
        assert lakehouse.table_versions(spark, conf, specs) == want
        assert lakehouse.table_version(spark, conf, ITEMS) == want["items"]
        return want

    lakehouse.ensure_tables(spark, conf, specs)
    assert check() == {"events": 0, "items": 0}  # created
    for i in range(12):  # appends: Delta writes a checkpoint at version 10
        put_events(spark, conf, [(1, 100 + i, f"2026-01-{1 + i:02d} 10:00:00")])
        if i >= 8:
            assert check()["events"] == i + 1
    log_dir = Lakehouse(conf.lakehouse.root).local_path(conf.table_path("events")) / "_delta_log"
    assert any(".checkpoint." in p.name for p in log_dir.iterdir()), sorted(p.name for p in log_dir.iterdir())
    put_items(spark, conf, [(1, "Alien", ["scifi"]), (2, "Pasta", ["cooking"])])  # MERGE: insert
    put_items(spark, conf, [(1, "Alien Planet", ["scifi"]), (3, "Bread", ["cooking"])])  # MERGE: insert one
    assert check() == {"events": 12, "items": 2}
    lakehouse.restore_version(spark, conf, EVENTS, 4)
    assert check() == {"events": 13, "items": 2}  # a RESTORE is a commit too
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 4
    lakehouse.restore_version(spark, conf, EVENTS, 13)  # already there: no commit
    assert check()["events"] == 13


def test_ensured_tables_are_cached_until_forgotten(spark, tmp_path):
    """A table ensured once is returned from memory; after its folder and registration are deleted (a scratch
    lakehouse made again), :func:`lakehouse.forget_ensured` makes the next use create and register it again."""
    import shutil

    from tests.migration_helpers import put_events

    conf = make_conf(tmp_path / "lake")
    first = lakehouse.ensure_table(spark, conf, EVENTS)
    assert lakehouse.ensure_table(spark, conf, EVENTS) is first  # no catalog or storage round trip
    lakehouse.ensure_tables(spark, conf, (EVENTS, ITEMS))
    assert lakehouse.ensure_table(spark, conf, ITEMS) is not first
    put_events(spark, conf, [(1, 10, "2026-01-01 10:00:00"), (1, 11, "2026-01-01 10:05:00")])
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 2

    spark.sql(f"DROP DATABASE {conf.lakehouse.database} CASCADE")
    shutil.rmtree(tmp_path / "lake")
    lakehouse.forget_ensured(conf)
    lakehouse.ensure_database(spark, conf)
    put_events(spark, conf, [(2, 12, "2026-01-02 10:00:00")])
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 1
    assert spark.catalog.tableExists(conf.table_name("events"))
    assert lakehouse.table_version(spark, conf, EVENTS) == 1  # created again, then one append

    # The one-listing path still refuses a name registered at another lakehouse.
    other = make_conf(tmp_path / "other")
    other = other.model_copy(update={"lakehouse": other.lakehouse.model_copy(
        update={"database": conf.lakehouse.database})})
    with pytest.raises(RuntimeError, match="points at .* not at this lakehouse's"):
        lakehouse.ensure_tables(spark, other, (EVENTS,))


def test_a_table_of_an_older_release_gains_the_new_nullable_column(spark, tmp_path):
    """``evaluation_runs`` gained ``seed``: an evaluation on a lakehouse whose table predates it adds the column (old
    rows read null) instead of failing, and a new process that registers the old table does not fail either."""
    import dataclasses

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from driftrec.tables import EVALUATION_RUNS

    conf = make_conf(tmp_path / "lake")
    old = dataclasses.replace(EVALUATION_RUNS, schema=T.StructType(
        [f for f in EVALUATION_RUNS.schema.fields if f.name != "seed"]))
    row = {"run_id": "old", "dataset": "d", "protocol": "temporal", "system": "als", "segment": "all", "k": 10,
           "metric": "ndcg", "value": 0.5, "users": 3, "config_json": "{}"}
    as_df = lambda r, spec: spark.createDataFrame([r]).withColumn("created_at", F.current_timestamp())  # noqa: E731
    lakehouse.append(spark, conf, old, as_df(row, old))
    spark.sql(f"DROP TABLE {conf.table_name('evaluation_runs')}")  # a new process: registers it from its folder
    lakehouse.forget_ensured(conf)

    new = as_df({**row, "run_id": "new", "seed": 7, "value": 0.25}, EVALUATION_RUNS)
    lakehouse.replace_where(spark, conf, EVALUATION_RUNS, new, "run_id = 'new'")
    stored = {r["run_id"]: r for r in lakehouse.read_table(spark, conf, EVALUATION_RUNS).collect()}
    assert set(stored) == {"old", "new"}
    assert stored["old"]["seed"] is None and stored["old"]["value"] == 0.5
    assert stored["new"]["seed"] == 7 and stored["new"]["value"] == 0.25
