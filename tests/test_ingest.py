"""Ingest: MovieLens layouts and generic files into real Delta tables; quarantine; idempotence; portability."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from delta.tables import DeltaTable

from driftrec import lakehouse
from driftrec.sources import MissingColumnError, SourceReadError
from driftrec.tables import EVENTS, INGEST_LOG, ITEMS, QUARANTINE
from jobs.ingest import IngestJob
from tests.conftest import ML_LATEST_SMALL, make_conf

NOW = datetime(2026, 11, 29, 12, 0, 0)


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def movielens_csv(d: Path) -> Path:
    """A tiny ml-latest-format release: 6 good ratings and one bad row of each kind MovieLens can carry."""
    _write(
        d / "ratings.csv",
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,964982703\n"
        "1,20,3.5,964982800\n"
        "1,30,5.0,965000000\n"
        "2,10,2.0,1100000000\n"
        "2,30,1.0,1100000100\n"
        "3,20,4.5,1500000000\n"
        ",10,4.0,964982703\n"  # missing user id
        "4,abc,4.0,964982703\n"  # non-numeric item id
        "4,10,4.0,yesterday\n"  # unparsable timestamp
        "4,10,4.0,4102444800\n"  # 2100-01-01: future timestamp
        "4,20,NaN,964982703\n"  # NaN weight
        "4,30,-1.0,964982703\n",  # negative weight
    )
    _write(
        d / "movies.csv",
        "movieId,title,genres\n"
        '10,"Heat (1995)",Action|Crime|Thriller\n'
        '20,"Toy Story (1995)",Adventure|Animation|Children\n'
        '30,"Some Film, The (2001)",(no genres listed)\n'
        "x1,Broken,Drama\n",
    )
    _write(d / "tags.csv", "userId,movieId,tag,timestamp\n1,10,heist,964982703\n2,10,Pacino,964982703\n1,10,heist,1\n")
    return d


def test_movielens_ingest_quarantine_idempotence_and_catalog(spark, conf, tmp_path):
    src = movielens_csv(tmp_path / "ml")
    job = IngestJob(spark, conf, now=NOW)
    report = job.run(job.plan(movielens=str(src)))

    assert report.total("rows_read", "events") == 12
    assert report.total("rows_inserted", "events") == 6
    assert report.total("rows_quarantined", "events") == 6
    assert report.total("rows_inserted", "items") == 3
    assert report.total("rows_quarantined", "items") == 1

    events = lakehouse.read_table(spark, conf, EVENTS)
    assert events.count() == 6
    row = events.filter("user_id = 1 AND item_id = 10").first()
    assert row["event_type"] == "rating" and row["weight"] == 4.0
    assert str(row["event_ts"]) == "2000-07-30 18:45:03" and str(row["event_date"]) == "2000-07-30"
    assert row["source"].endswith("ratings.csv")
    assert DeltaTable.forPath(spark, conf.table_path("events")).detail().first()["partitionColumns"] == ["event_date"]

    reasons = {r["reason"] for r in lakehouse.read_table(spark, conf, QUARANTINE).collect()}
    assert reasons == {
        "missing user_id",
        "non-numeric item_id 'abc'",
        "unparsable timestamp 'yesterday'",
        "future timestamp 2100-01-01 00:00:00",
        "NaN weight",
        "negative weight -1.0",
        "non-numeric item_id 'x1'",
    }
    q = lakehouse.read_table(spark, conf, QUARANTINE).filter("reason = 'NaN weight'").first()
    assert q["row_content"] == '{"userId":"4","movieId":"20","rating":"NaN","timestamp":"964982703"}'
    assert q["target"] == "events" and q["source"].endswith("ratings.csv")

    items = {r["item_id"]: r for r in lakehouse.read_table(spark, conf, ITEMS).collect()}
    assert items[10]["categories"] == ["Action", "Crime", "Thriller"]
    assert items[10]["text"] == "heist, pacino"
    assert items[30]["categories"] == [] and items[30]["title"] == "Some Film, The (2001)"

    # Registered by name in the catalog database, queryable with SQL.
    n = spark.sql(f"SELECT count(*) AS n FROM {conf.table_name('events')} WHERE user_id = 1").first()["n"]
    assert n == 3

    # Re-ingesting the same release is a no-op on every table.
    versions = {t: DeltaTable.forPath(spark, conf.table_path(t)).history(1).first()["version"] for t in ("events",)}
    again = job.run(job.plan(movielens=str(src)))
    assert again.total("rows_inserted") == 0 and again.total("rows_updated") == 0
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 6
    assert lakehouse.read_table(spark, conf, QUARANTINE).count() == 7
    assert lakehouse.read_table(spark, conf, ITEMS).count() == 3
    assert versions["events"] >= 1

    # A corrected weight for a known event updates it in place instead of duplicating it.
    fixed = _write(tmp_path / "fix" / "ratings_fix.csv", "user_id,item_id,timestamp,weight,event_type\n1,10,964982703,5.0,rating\n")
    upd = job.run(job.plan(events=[str(fixed)]))
    assert upd.total("rows_updated") == 1 and upd.total("rows_inserted") == 0
    assert lakehouse.read_table(spark, conf, EVENTS).filter("user_id = 1 AND item_id = 10").first()["weight"] == 5.0


def test_generic_events_mapping_types_and_duplicates(spark, tmp_path):
    conf = make_conf(
        tmp_path / "lh",
        'ingest.mapping.user_id="uid"',
        'ingest.mapping.item_id="sku"',
        'ingest.mapping.timestamp="when"',
        'ingest.mapping.event_type="action"',
        'ingest.mapping.weight="w"',
        'ingest.mapping.timestamp_format="yyyy-MM-dd HH:mm:ss"',
    )
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "uid": ["7", "7", "7", "8", "8", "9"],
            "sku": ["100", "101", "101", "100", "100", "102"],
            "when": [
                "2026-03-01 10:00:00",
                "2026-03-01 10:05:00",
                "2026-03-02 09:00:00",
                "2026-03-01 10:00:00",
                "2026-03-01 10:00:00",  # exact duplicate of the previous row
                "2026-03-01 11:00:00",
            ],
            "action": ["view", "PURCHASE", "teleport", "click", "click", "view"],
            "w": [1.0, 5.0, 1.0, 2.0, 2.0, float("inf")],
        }
    ).to_parquet(path)
    job = IngestJob(spark, conf, now=NOW)
    report = job.run(job.plan(events=[str(path)], fmt="parquet"))
    src = report.sources[0]
    assert (src.rows_read, src.rows_valid, src.rows_duplicate, src.rows_inserted, src.rows_quarantined) == (6, 4, 1, 3, 2)
    ev = lakehouse.read_table(spark, conf, EVENTS).orderBy("user_id", "event_ts").collect()
    assert [(r["user_id"], r["item_id"], r["event_type"]) for r in ev] == [(7, 100, "view"), (7, 101, "purchase"), (8, 100, "click")]
    reasons = sorted(r["reason"] for r in lakehouse.read_table(spark, conf, QUARANTINE).collect())
    assert reasons == ["infinite weight", "unknown event type 'teleport'"]
    log_row = spark.read.format("delta").load(conf.table_path("ingest_log")).first()
    assert (log_row["rows_read"], log_row["rows_duplicate"], log_row["rows_quarantined"]) == (6, 1, 2)


def test_missing_column_fails_before_writing(spark, conf, tmp_path):
    src = movielens_csv(tmp_path / "ml")
    job = IngestJob(spark, conf, now=NOW)
    job.run(job.plan(movielens=str(src)))
    before = {t: DeltaTable.forPath(spark, conf.table_path(t)).history(1).first()["version"] for t in ("events", "items", "quarantine")}

    broken = _write(tmp_path / "broken" / "ratings.csv", "userId,movieId,rating\n1,10,4.0\n")
    _write(tmp_path / "broken" / "movies.csv", "movieId,title,genres\n10,X,Drama\n")
    with pytest.raises(MissingColumnError, match=r"ratings\.csv.*\['timestamp'\]"):
        job.run(job.plan(movielens=str(tmp_path / "broken")))
    bad_generic = _write(tmp_path / "g" / "e.csv", "user_id,item_id,event_type,weight\n1,2,view,1\n")
    with pytest.raises(MissingColumnError, match="timestamp"):
        job.plan(events=[str(bad_generic)])

    after = {t: DeltaTable.forPath(spark, conf.table_path(t)).history(1).first()["version"] for t in ("events", "items", "quarantine")}
    assert after == before
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 6


def _versions(spark, conf) -> dict:
    """Each ingest table's latest Delta version (None where the table does not exist yet)."""
    return {
        t.logical: DeltaTable.forPath(spark, conf.table_path(t.logical)).history(1).first()["version"]
        if lakehouse.table_exists(spark, conf, t)
        else None
        for t in (EVENTS, ITEMS, QUARANTINE, INGEST_LOG)
    }


def test_csv_directory_reads_each_file_by_its_own_header(spark, conf, tmp_path):
    """Issue 20 item 2: a file whose columns come in another order is not read by the first file's header."""
    d = tmp_path / "events"
    _write(d / "a.csv", "user_id,item_id,timestamp,event_type,weight\n1,100,1700000000,view,1\n")
    _write(d / "c.csv", "item_id,user_id,weight,event_type,timestamp\n200,2,3.5,click,1700000100\n")
    _write(d / "b.csv", "user_id,item_id,timestamp,event_type,weight\n3,300,1700000200,view,2\n")  # a's group
    job = IngestJob(spark, conf, now=NOW)
    report = job.run(job.plan(events=[str(d)]))
    assert report.total("rows_quarantined") == 0
    got = sorted((r["user_id"], r["item_id"], r["event_type"], r["weight"], r["source"].rsplit("/", 1)[-1])
                 for r in lakehouse.read_table(spark, conf, EVENTS).collect())
    assert got == [(1, 100, "view", 1.0, "a.csv"), (2, 200, "click", 3.5, "c.csv"), (3, 300, "view", 2.0, "b.csv")]

    # A file of the directory lacking a required column is named, before anything is written.
    _write(d / "d.csv", "user_id,item_id,timestamp,event_type\n4,400,1700000300,view\n")
    before = _versions(spark, conf)
    with pytest.raises(MissingColumnError, match=r"d\.csv.*\['weight'\]"):
        job.run(job.plan(events=[str(d)]))
    assert _versions(spark, conf) == before


def _parquet_events(path: Path, users: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "user_id": [str(u) for u in users],
            "item_id": [str(10 + i) for i in range(len(users))],
            "timestamp": [str(1700000000 + i) for i in range(len(users))],
            "event_type": ["view"] * len(users),
            "weight": ["1.0"] * len(users),
        }
    ).to_parquet(path, compression=None)
    return path


@pytest.mark.parametrize("damage", ["truncated", "corrupt_pages"])
def test_unreadable_source_fails_before_any_write(spark, conf, tmp_path, damage):
    """Issue 20 item 6: a good source then a directory with a damaged file: no table changes, the file is named."""
    good = _parquet_events(tmp_path / "good.parquet", [1, 2])
    d = tmp_path / "dir"
    _parquet_events(d / "a_ok.parquet", [3])
    bad = _parquet_events(d / "b_bad.parquet", list(range(100, 2100)))
    data = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) - 40])  # the footer is cut: no Parquet magic at the tail
    else:
        bad.write_bytes(data[:4] + b"\xff" * 2000 + data[2004:])  # the first page headers garbage, the footer intact
    job = IngestJob(spark, conf, now=NOW)
    with pytest.raises(SourceReadError, match=r"b_bad\.parquet"):
        job.run(job.plan(events=[str(good), str(d)], fmt="parquet"))
    assert set(_versions(spark, conf).values()) == {None}  # not even an empty table was created

    # With the damaged file gone the same run loads both sources and logs them.
    bad.unlink()
    report = job.run(job.plan(events=[str(good), str(d)], fmt="parquet"))
    assert report.total("rows_inserted") == 3
    assert lakehouse.read_table(spark, conf, INGEST_LOG).count() == 2


def test_epoch_floor_multiline_fields_and_exact_reasons(spark, conf, tmp_path):
    """Issue 20 item 7: 1970 timestamps quarantined, a quoted newline is one row, reasons say what is wrong."""
    src = _write(
        tmp_path / "e.csv",
        "user_id,item_id,timestamp,event_type,weight,note\n"
        '1,10,1700000000,view,1,"first line\nsecond line"\n'
        "2,10,0,view,1,zero\n"
        "3,10,-86400,view,1,negative\n"
        "1.0,10,1700000000,view,1,decimal id\n"
        "4,99999999999999999999,1700000000,view,1,overflow\n"
        "5,10,1700000000000,view,1,milliseconds\n"
        "6,10,1700000000,,1,no type\n"
        "7,10,631152000,view,1,1990-01-01 exactly\n",
    )
    job = IngestJob(spark, conf, now=NOW)
    report = job.run(job.plan(events=[str(src)]))
    assert report.total("rows_read") == 8
    assert sorted(r["user_id"] for r in lakehouse.read_table(spark, conf, EVENTS).collect()) == [1, 7]
    reasons = {r["reason"] for r in lakehouse.read_table(spark, conf, QUARANTINE).collect()}
    assert reasons == {
        "timestamp 1970-01-01 00:00:00 ('0') before ingest.min_event_date 1990-01-01",
        "timestamp 1969-12-31 00:00:00 ('-86400') before ingest.min_event_date 1990-01-01",
        "non-integer user_id '1.0'",
        "out-of-range item_id '99999999999999999999' (over 64 bits)",
        "out-of-range timestamp '1700000000000' for epoch_s",
        "missing event_type",
    }
    # The floor is configurable.
    early = make_conf(tmp_path / "lh_early", "ingest.min_event_date=1969-01-01")
    ejob = IngestJob(spark, early, now=NOW)
    ejob.run(ejob.plan(events=[str(src)]))
    assert sorted(r["user_id"] for r in lakehouse.read_table(spark, early, EVENTS).collect()) == [1, 2, 3, 7]


def test_other_movielens_layouts_and_sequence_clock(spark, conf, tmp_path):
    ml100k = tmp_path / "ml-100k"
    _write(ml100k / "u.data", "1\t10\t4\t881250949\n2\t20\t3\t891717742\n")
    genres = ["unknown", "Action", "Comedy"]
    _write(ml100k / "u.genre", "".join(f"{g}|{i}\n" for i, g in enumerate(genres)))
    _write(ml100k / "u.item", "10|Café (1995)|01-Jan-1995||http://x|0|1|1\n20|Other (1996)|01-Jan-1996||http://y|1|0|0\n", encoding="latin-1")
    ml1m = tmp_path / "ml-1m"
    _write(ml1m / "ratings.dat", "5::30::5::978300760\n5::31::3::978302109\n")
    _write(ml1m / "movies.dat", "30::Söme (2000)::Drama|War\n31::Two (2001)::Comedy\n", encoding="latin-1")
    job = IngestJob(spark, conf, now=NOW)
    job.run(job.plan(movielens=str(ml100k)) + job.plan(movielens=str(ml1m)))
    ev = lakehouse.read_table(spark, conf, EVENTS)
    assert ev.count() == 4
    assert sorted((r["user_id"], r["item_id"], r["weight"]) for r in ev.collect()) == [
        (1, 10, 4.0), (2, 20, 3.0), (5, 30, 5.0), (5, 31, 3.0)
    ]
    items = {r["item_id"]: r for r in lakehouse.read_table(spark, conf, ITEMS).collect()}
    assert items[10]["title"] == "Café (1995)" and items[10]["categories"] == ["Action", "Comedy"]
    assert items[20]["categories"] == []  # "unknown" is not a category
    assert items[30]["title"] == "Söme (2000)" and items[30]["categories"] == ["Drama", "War"]

    # Logs that carry only an order get the documented synthetic clock: position n -> 2000-01-01 + n minutes.
    seq_conf = make_conf(tmp_path / "lh_seq", 'ingest.mapping.timestamp="pos"', 'ingest.mapping.timestamp_format="sequence"')
    seq = _write(tmp_path / "seq.csv", "user_id,item_id,pos,event_type,weight\n1,5,0,view,1\n1,6,1,view,1\n1,7,2,view,1\n")
    sjob = IngestJob(spark, seq_conf, now=NOW)
    sjob.run(sjob.plan(events=[str(seq)]))
    got = [str(r["event_ts"]) for r in lakehouse.read_table(spark, seq_conf, EVENTS).orderBy("event_ts").collect()]
    assert got == ["2000-01-01 00:00:00", "2000-01-01 00:01:00", "2000-01-01 00:02:00"]


def test_tables_readable_without_spark(spark, conf, tmp_path):
    """A warehouse reader that is not Spark (delta-rs) sees exactly the rows the job wrote."""
    from deltalake import DeltaTable as RsDeltaTable

    job = IngestJob(spark, conf, now=NOW)
    job.run(job.plan(movielens=str(movielens_csv(tmp_path / "ml"))))
    rs = RsDeltaTable(conf.table_path("events")).to_pandas()
    sp = lakehouse.read_table(spark, conf, EVENTS).toPandas()
    key = ["event_id"]
    cols = ["event_id", "user_id", "item_id", "event_type", "weight"]
    pd.testing.assert_frame_equal(
        rs[cols].sort_values(key).reset_index(drop=True), sp[cols].sort_values(key).reset_index(drop=True)
    )
    assert len(rs) == 6
    items = RsDeltaTable(conf.table_path("items")).to_pandas()
    assert sorted(items["item_id"].tolist()) == [10, 20, 30]


@pytest.mark.slow
@pytest.mark.skipif(not ML_LATEST_SMALL.is_dir(), reason="ml-latest-small is not beside the repo (../shared/data)")
def test_ml_latest_small_counts_and_rerun(spark, conf):
    job = IngestJob(spark, conf, now=NOW)
    first = job.run(job.plan(movielens=str(ML_LATEST_SMALL)))
    source_rows = sum(1 for _ in open(ML_LATEST_SMALL / "ratings.csv")) - 1
    source_items = sum(1 for _ in open(ML_LATEST_SMALL / "movies.csv", encoding="utf-8")) - 1
    assert source_rows == 100_836
    assert first.total("rows_inserted", "events") == source_rows
    assert first.total("rows_quarantined") == 0
    assert lakehouse.read_table(spark, conf, EVENTS).count() == source_rows
    assert lakehouse.read_table(spark, conf, ITEMS).count() == source_items
    second = job.run(job.plan(movielens=str(ML_LATEST_SMALL)))
    assert second.total("rows_inserted") == 0 and second.total("rows_updated") == 0
    assert lakehouse.read_table(spark, conf, EVENTS).count() == source_rows


def _rows(spark, conf) -> list[tuple]:
    return sorted((r["user_id"], r["item_id"], r["weight"], r["source"].rsplit("/", 1)[-1])
                  for r in lakehouse.read_table(spark, conf, EVENTS).collect())


def test_several_sources_are_one_commit_per_table(spark, conf, tmp_path):
    """Issue 20 item 6: three events sources, two catalogues and two sources' rejected rows are one commit on each
    table, and the rows stored are those merging the sources one by one leaves (later differing weights win)."""
    head = "user_id,item_id,timestamp,event_type,weight\n"
    job = IngestJob(spark, conf, now=NOW)
    first = _write(tmp_path / "s0.csv", head + "1,10,1700000001,view,1\n2,10,1700000002,view,1\n")
    job.run(job.plan(events=[str(first)]))
    a = _write(tmp_path / "a.csv", head + "1,10,1700000001,view,1\n3,30,1700000003,view,1\n"
               "4,40,1700000004,view,2\nx,40,1700000004,view,2\n")
    b = _write(tmp_path / "b.csv", head + "1,10,1700000001,view,2\n4,40,1700000004,view,5\n"
               "3,30,1700000003,view,1\n5,50,1700000005,view,1\n6,60,yesterday,view,1\n")
    c = _write(tmp_path / "c.csv", head + "1,10,1700000001,view,1\n2,10,1700000002,view,3\n6,60,1700000006,view,1\n")
    i1 = _write(tmp_path / "i1.csv", "item_id,title,categories\n10,X,Drama\n20,Y,Drama\n")
    i2 = _write(tmp_path / "i2.csv", "item_id,title,categories\n20,Y2,Comedy\n30,Z,Comedy\n")
    before = _versions(spark, conf)

    report = job.run(job.plan(events=[str(a), str(b), str(c)], items=[str(i1), str(i2)]))
    assert {t: v - before[t] for t, v in _versions(spark, conf).items()} == {
        "events": 1, "items": 1, "quarantine": 1, "ingest_log": 1}
    # User 1: a keeps 1, b changes it to 2, c back to 1: c's row. 3: a's (b repeats it). 4: b's later weight.
    assert _rows(spark, conf) == [(1, 10, 1.0, "c.csv"), (2, 10, 3.0, "c.csv"), (3, 30, 1.0, "a.csv"),
                                  (4, 40, 5.0, "b.csv"), (5, 50, 1.0, "b.csv"), (6, 60, 1.0, "c.csv")]
    got = [(s.source.rsplit("/", 1)[-1], s.rows_read, s.rows_valid, s.rows_inserted, s.rows_updated,
            s.rows_quarantined) for s in report.sources]
    assert got == [("a.csv", 4, 3, 1, 0, 1), ("b.csv", 5, 4, 2, 0, 1), ("c.csv", 3, 3, 1, 2, 0),
                   ("i1.csv", 2, 2, 1, 0, 0), ("i2.csv", 2, 2, 2, 0, 0)]
    items = {r["item_id"]: r["title"] for r in lakehouse.read_table(spark, conf, ITEMS).collect()}
    assert items == {10: "X", 20: "Y2", 30: "Z"}
    assert lakehouse.read_table(spark, conf, QUARANTINE).count() == 2
    logged = lakehouse.read_table(spark, conf, INGEST_LOG).where(f"run_id = '{report.run_id}'")
    assert sorted(r["rows_inserted"] for r in logged.collect()) == [1, 1, 1, 2, 2]

    # The same sources again store nothing new and change no value.
    stored = _rows(spark, conf)
    again = job.run(job.plan(events=[str(a), str(b), str(c)], items=[str(i1), str(i2)]))
    assert again.total("rows_inserted") == 0 and _rows(spark, conf) == stored
    assert lakehouse.read_table(spark, conf, ITEMS).count() == 3


def test_a_write_that_fails_on_a_later_source_stores_no_source(spark, conf, tmp_path):
    """A source whose rows pass validation but fail at write time (a CHECK constraint on the table) after a good
    source: the run fails and no table changes (merged one by one, the good source stayed, with no ingest_log)."""
    head = "user_id,item_id,timestamp,event_type,weight\n"
    job = IngestJob(spark, conf, now=NOW)
    job.run(job.plan(events=[str(_write(tmp_path / "s0.csv", head + "1,10,1700000001,view,1\n"))]))
    spark.sql(f"ALTER TABLE delta.`{conf.table_path('events')}` ADD CONSTRAINT weight_cap CHECK (weight < 100)")
    good = _write(tmp_path / "good.csv", head + "2,10,1700000002,view,1\n3,10,1700000003,view,1\nx,1,1,view,1\n")
    heavy = _write(tmp_path / "heavy.csv", head + "4,10,1700000004,view,1\n5,10,1700000005,view,500\n")
    before, rows = _versions(spark, conf), _rows(spark, conf)
    with pytest.raises(Exception, match="weight_cap"):
        job.run(job.plan(events=[str(good), str(heavy)]))
    assert _versions(spark, conf) == before
    assert _rows(spark, conf) == rows == [(1, 10, 1.0, "s0.csv")]
