"""Hostile inputs, one kind per row of a table, each with its expected outcome (issue 20).

Three outcomes: the row is **stored** (with the values asserted), it is **quarantined** with an exact reason, or the
whole input is **refused** with a clear error before any write (the stored events and every ingest table's Delta
version unchanged). Row-level kinds share two ingest runs on one lakehouse (a CSV directory and two Parquet files),
each kind finding its own row by a unique user id or note; refused kinds each make their own attempt on top.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from delta.tables import DeltaTable

from driftrec import lakehouse
from driftrec.pseudonym import PseudonymKeyError
from driftrec.sources import EmptySourceError, MissingColumnError, SourceReadError
from driftrec.tables import EVENTS, INGEST_LOG, ITEMS, QUARANTINE
from jobs.ingest import IngestJob
from tests.conftest import make_conf

NOW = datetime(2026, 11, 29, 12, 0, 0)
HEADER = "user_id,item_id,timestamp,event_type,weight,note"
FLOOR = "before ingest.min_event_date 1990-01-01"


def stored(user: int, item: int, event_type: str = "view", weight: float = 1.0, ts: str | None = None) -> tuple:
    return ("stored", (user, item, event_type, weight, ts))


def quarantined(reason: str) -> tuple:
    return ("quarantined", reason)


# kind, lines of main.csv (after HEADER), the text that finds its row in quarantine (default: the kind, which is the
# row's note), outcome.
ROWS = [
    ("plain_row", ["1001,10,1700000000,view,1.0,plain_row"], None, stored(1001, 10, ts="2023-11-14 22:13:20")),
    ("padded_fields", [" 1002 , 11 , 1700000000 , view , 2 ,padded_fields"], None, stored(1002, 11, weight=2.0)),
    ("uppercase_event_type", ["1003,12,1700000000,PURCHASE,1,uppercase_event_type"], None, stored(1003, 12, "purchase")),
    ("quoted_newline", ['1004,13,1700000000,view,1,"quoted_newline\nsecond line"'], "second line", stored(1004, 13)),
    ("quoted_delimiter", ['1005,14,1700000000,view,1,"quoted_delimiter, with a comma"'], None, stored(1005, 14)),
    ("fractional_epoch", ["1006,15,1700000000.5,view,1,fractional_epoch"], None,
     stored(1006, 15, ts="2023-11-14 22:13:20.500000")),
    ("scientific_epoch", ["1007,16,1.7e9,view,1,scientific_epoch"], None, stored(1007, 16, ts="2023-11-14 22:13:20")),
    ("zero_user_id", ["0,17,1700000000,view,1,zero_user_id"], None, stored(0, 17)),
    ("exact_duplicate_row", ["1009,18,1700000000,view,1,exact_duplicate_row"] * 2, None, stored(1009, 18)),
    ("at_the_floor", ["1010,19,631152000,view,1,at_the_floor"], None, stored(1010, 19, ts="1990-01-01 00:00:00")),
    ("zero_weight", ["1011,20,1700000000,view,0,zero_weight"], None, stored(1011, 20, weight=0.0)),
    ("surplus_field", ["1012,21,1700000000,view,1,surplus_field,SURPLUS"], None, stored(1012, 21)),
    ("missing_user_id", [",10,1700000000,view,1,missing_user_id"], None, quarantined("missing user_id")),
    ("blank_user_id", ["   ,10,1700000000,view,1,blank_user_id"], None, quarantined("missing user_id")),
    ("non_numeric_user_id", ["abc,10,1700000000,view,1,non_numeric_user_id"], None,
     quarantined("non-numeric user_id 'abc'")),
    ("decimal_user_id", ["1.0,10,1700000000,view,1,decimal_user_id"], None, quarantined("non-integer user_id '1.0'")),
    ("fractional_user_id", ["2.5,10,1700000000,view,1,fractional_user_id"], None,
     quarantined("non-integer user_id '2.5'")),
    ("negative_user_id", ["-3,10,1700000000,view,1,negative_user_id"], None, quarantined("negative user_id '-3'")),
    ("overflowing_user_id", ["99999999999999999999,10,1700000000,view,1,overflowing_user_id"], None,
     quarantined("out-of-range user_id '99999999999999999999' (over 64 bits)")),
    ("missing_item_id", ["1020,,1700000000,view,1,missing_item_id"], None, quarantined("missing item_id")),
    ("non_numeric_item_id", ["1021,x1,1700000000,view,1,non_numeric_item_id"], None,
     quarantined("non-numeric item_id 'x1'")),
    ("missing_timestamp", ["1022,10,,view,1,missing_timestamp"], None, quarantined("missing timestamp")),
    ("unparsable_timestamp", ["1023,10,yesterday,view,1,unparsable_timestamp"], None,
     quarantined("unparsable timestamp 'yesterday'")),
    ("zero_timestamp", ["1024,10,0,view,1,zero_timestamp"], None,
     quarantined(f"timestamp 1970-01-01 00:00:00 ('0') {FLOOR}")),
    ("negative_timestamp", ["1025,10,-86400,view,1,negative_timestamp"], None,
     quarantined(f"timestamp 1969-12-31 00:00:00 ('-86400') {FLOOR}")),
    ("pre_floor_timestamp", ["1026,10,500000000,view,1,pre_floor_timestamp"], None,
     quarantined(f"timestamp 1985-11-05 00:53:20 ('500000000') {FLOOR}")),
    ("milliseconds_as_seconds", ["1027,10,1700000000000,view,1,milliseconds_as_seconds"], None,
     quarantined("out-of-range timestamp '1700000000000' for epoch_s")),
    ("future_timestamp", ["1028,10,4102444800,view,1,future_timestamp"], None,
     quarantined("future timestamp 2100-01-01 00:00:00")),
    ("missing_weight", ["1029,10,1700000000,view,,missing_weight"], None, quarantined("missing weight")),
    ("non_numeric_weight", ["1030,10,1700000000,view,heavy,non_numeric_weight"], None,
     quarantined("non-numeric weight 'heavy'")),
    ("nan_weight", ["1031,10,1700000000,view,NaN,nan_weight"], None, quarantined("NaN weight")),
    ("infinite_weight", ["1032,10,1700000000,view,Infinity,infinite_weight"], None, quarantined("infinite weight")),
    ("negative_weight", ["1033,10,1700000000,view,-1,negative_weight"], None, quarantined("negative weight -1.0")),
    ("missing_event_type", ["1034,10,1700000000,,1,missing_event_type"], None, quarantined("missing event_type")),
    ("unknown_event_type", ["1035,10,1700000000,teleport,1,unknown_event_type"], None,
     quarantined("unknown event type 'teleport'")),
    ("short_row", ["1036,10"], "1036", quarantined("missing timestamp; missing weight; missing event_type")),
    ("every_field_wrong", ["abc,x,yesterday,teleport,-1,every_field_wrong"], None, quarantined(
        "non-numeric user_id 'abc'; non-numeric item_id 'x'; unparsable timestamp 'yesterday'; negative weight -1.0; "
        "unknown event type 'teleport'")),
]

# Files beside main.csv in the same directory: kind, file name, bytes, outcome (a stored row, or none from it).
ROW = "1700000000,view,1"
FILES = [
    ("reordered_header", "reordered.csv", b"item_id,weight,user_id,event_type,timestamp,note\n20,2.5,1101,click,1700000000,r\n",
     stored(1101, 20, "click", 2.5)),
    ("crlf_line_endings", "crlf.csv", f"{HEADER}\r\n1102,21,{ROW},crlf\r\n".encode(), stored(1102, 21)),
    ("utf8_bom", "bom.csv", f"\ufeff{HEADER}\n1103,22,{ROW},bom\n".encode(), stored(1103, 22)),
    ("no_final_newline", "nonl.csv", f"{HEADER}\n1104,23,{ROW},nonl".encode(), stored(1104, 23)),
    ("unmapped_extra_columns", "extra.csv", f"session,{HEADER},device\ns9,1105,24,{ROW},x,phone\n".encode(),
     stored(1105, 24)),
    ("blank_lines", "blank.csv", f"{HEADER}\n\n1106,25,{ROW},blank\n\n\n".encode(), stored(1106, 25)),
    ("header_only_file", "header_only.csv", f"{HEADER}\n".encode(), ("none", None)),
    ("latin1_bytes_in_note", "latin1.csv", f"{HEADER}\n1107,26,{ROW},caf".encode() + b"\xe9\n", stored(1107, 26)),
]

# Parquet sources, one ingest run: native column types, and float ids (as pandas writes an int column with a gap).
PARQUET = [
    ("parquet_native_types", None, stored(1201, 30, "view", 2.5, ts="2023-11-14 22:13:20")),
    ("parquet_float_user_id", None, quarantined("non-integer user_id '1202.0'")),
    ("parquet_null_user_id", None, quarantined("missing user_id")),
]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """One lakehouse loaded once with every row-level kind; returns (conf, events by user, quarantine by key)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    conf = make_conf(root / "lakehouse")
    d = root / "csv"
    d.mkdir()
    (d / "main.csv").write_text(HEADER + "\n" + "\n".join(ln for _, lines, _, _ in ROWS for ln in lines) + "\n")
    for _, name, data, _ in FILES:
        (d / name).write_bytes(data)
    pq = root / "parquet"
    pq.mkdir()
    native = {"user_id": [1201], "item_id": [30], "timestamp": [1700000000], "event_type": ["view"], "weight": [2.5]}
    pd.DataFrame(native).to_parquet(pq / "native.parquet")
    floats = {"user_id": [1202.0, float("nan")], "item_id": [31, 32], "timestamp": [1700000000, 1700000001],
              "event_type": ["view", "view"], "weight": [1.0, 1.0], "note": ["parquet_float_user_id",
                                                                            "parquet_null_user_id"]}
    pd.DataFrame(floats).to_parquet(pq / "floats.parquet")

    job = IngestJob(spark, conf, now=NOW)
    job.run(job.plan(events=[str(d)]))
    job.run(job.plan(events=[str(pq / "native.parquet"), str(pq / "floats.parquet")], fmt="parquet"))

    events: dict[int, list] = {}
    for r in lakehouse.read_table(spark, conf, EVENTS).collect():
        events.setdefault(r["user_id"], []).append(r)
    quarantine: dict[str, list] = {}
    for r in lakehouse.read_table(spark, conf, QUARANTINE).collect():
        row = json.loads(r["row_content"])
        quarantine.setdefault(str(row.get("note") or row.get("user_id")), []).append(r)
        quarantine.setdefault(f"user {row.get('user_id')}", []).append(r)
    return conf, events, quarantine


def _check(lake, outcome: tuple, key: str, source_name: str | None = None) -> None:
    conf, events, quarantine = lake
    kind, want = outcome
    if kind == "stored":
        user, item, event_type, weight, ts = want
        rows = events.get(user, [])
        assert len(rows) == 1, f"user {user}: {len(rows)} events stored, expected 1"
        r = rows[0]
        assert (r["item_id"], r["event_type"], r["weight"]) == (item, event_type, weight)
        if ts is not None:
            assert str(r["event_ts"]) == ts
        if source_name is not None:
            assert r["source"].endswith(source_name)
        assert f"user {user}" not in quarantine, quarantine[f"user {user}"]
        assert not [r for rs in quarantine.values() for r in rs if key in r["row_content"]]  # no piece of it either
    elif kind == "quarantined":
        rows = quarantine.get(key, [])
        assert [r["reason"] for r in rows] == [want]
        user = json.loads(rows[0]["row_content"]).get("user_id")
        if user is not None and str(user).strip().isdigit():
            assert int(user) not in events  # nothing stored from the refused row
    else:  # a file without rows: nothing from it anywhere, and no error
        assert not [r for rs in events.values() for r in rs if r["source"].endswith(source_name)]
        assert not [r for rs in quarantine.values() for r in rs if r["source"].endswith(source_name)]
        assert any(r["source"].endswith("main.csv") for rs in events.values() for r in rs)  # the run went through


@pytest.mark.parametrize(("kind", "lines", "lookup", "outcome"), ROWS, ids=[r[0] for r in ROWS])
def test_row_kind(lake, kind, lines, lookup, outcome):
    _check(lake, outcome, lookup or kind, "main.csv")


@pytest.mark.parametrize(("kind", "name", "data", "outcome"), FILES, ids=[f[0] for f in FILES])
def test_file_kind(lake, kind, name, data, outcome):
    _check(lake, outcome, kind, name)


@pytest.mark.parametrize(("kind", "lookup", "outcome"), PARQUET, ids=[p[0] for p in PARQUET])
def test_parquet_kind(lake, kind, lookup, outcome):
    _check(lake, outcome, lookup or kind)


# -- refused: a clear error before any write -------------------------------------------------------------------


def _csv(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _parquet(path: Path, users: list[int], **overrides) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(users)
    cols = {"user_id": users, "item_id": list(range(n)), "timestamp": [1700000000 + i for i in range(n)],
            "event_type": ["view"] * n, "weight": [1.0] * n, **overrides}
    pd.DataFrame(cols).to_parquet(path, compression=None)
    return str(path)


def _damaged(path: Path, how: str) -> str:
    _parquet(path, list(range(5000, 7000)))
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-40])
    else:
        path.write_bytes(data[:4] + b"\xff" * 2000 + data[2004:])  # the first page headers; the footer intact
    return str(path.parent)


def _good_then(t: Path, second: str) -> list[str]:
    """A readable first source, then the bad one: the first must not be committed either."""
    return [_parquet(t / "good.parquet", [3001, 3002]), second]


GOOD = f"{HEADER}\n3001,1,{ROW},ok\n"


def _dir_one_file_short(t: Path) -> dict:
    _csv(t / "d" / "a.csv", GOOD)
    _csv(t / "d" / "b.csv", "user_id,item_id,timestamp,event_type\n3002,1,1700000000,view\n")
    return {"events": [str(t / "d")]}


def _empty_dir(t: Path) -> dict:
    (t / "void").mkdir()
    return {"events": [str(t / "void")]}


def _types_clash(t: Path) -> dict:
    _parquet(t / "p" / "a.parquet", [1])
    _parquet(t / "p" / "b.parquet", ["u1"])
    return {"events": [str(t / "p")], "fmt": "parquet"}


REFUSED = [
    ("missing_required_column",
     lambda t: {"events": [_csv(t / "e.csv", "user_id,item_id,event_type,weight\n1,2,view,1\n")]},
     MissingColumnError, r"e\.csv.*\['timestamp'\]"),
    ("one_file_of_a_dir_lacks_a_column", _dir_one_file_short, MissingColumnError, r"b\.csv.*\['weight'\]"),
    ("empty_file", lambda t: {"events": [_csv(t / "empty.csv", "")]}, (MissingColumnError, EmptySourceError),
     r"empty\.csv"),
    ("duplicate_header_names",
     lambda t: {"events": [_csv(t / "dup.csv", "user_id,user_id,item_id,timestamp,event_type,weight\n1,1,2,3,view,1\n")]},
     MissingColumnError, r"dup\.csv.*\['user_id'\]"),
    ("header_in_other_case", lambda t: {"events": [_csv(t / "case.csv", GOOD.upper())]},
     MissingColumnError, r"case\.csv.*\['user_id'"),
    ("items_without_item_id", lambda t: {"items": [_csv(t / "items.csv", "id,title\n1,X\n")]},
     MissingColumnError, r"items\.csv.*\['item_id'\]"),
    ("nonexistent_path", lambda t: {"events": [str(t / "nowhere")]}, Exception, r"(?i)path does not exist.*nowhere"),
    ("empty_directory", _empty_dir, EmptySourceError, r"void: no files to read"),
    ("truncated_parquet_after_a_good_source",
     lambda t: {"events": _good_then(t, _damaged(t / "dir" / "b_bad.parquet", "truncated")), "fmt": "parquet"},
     SourceReadError, r"b_bad\.parquet"),
    ("corrupt_parquet_pages_after_a_good_source",
     lambda t: {"events": _good_then(t, _damaged(t / "dir" / "b_bad.parquet", "pages")), "fmt": "parquet"},
     SourceReadError, r"b_bad\.parquet"),
    ("csv_read_as_parquet", lambda t: {"events": [_csv(t / "fake.parquet", GOOD)], "fmt": "parquet"},
     SourceReadError, r"fake\.parquet"),
    ("parquet_types_clash_in_a_dir", _types_clash, SourceReadError, r"(?i)merg"),
    ("unsupported_format", lambda t: {"events": [_csv(t / "e.json", "{}")], "fmt": "json"}, ValueError,
     r"unsupported source format 'json'"),
    ("pseudonymise_without_key", lambda t: {"events": [_csv(t / "e.csv", GOOD)], "conf": [
        "privacy.pseudonymise_users=true", 'privacy.pseudonym_key_env="DRIFTREC_TEST_UNSET_KEY"']},
     PseudonymKeyError, r"DRIFTREC_TEST_UNSET_KEY"),
]


def _state(spark, conf) -> tuple:
    versions = tuple(DeltaTable.forPath(spark, conf.table_path(t.logical)).history(1).first()["version"]
                     for t in (EVENTS, ITEMS, QUARANTINE, INGEST_LOG))
    return lakehouse.read_table(spark, conf, EVENTS).count(), versions


@pytest.mark.parametrize(("kind", "make", "error", "match"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_kind(spark, lake, tmp_path, kind, make, error, match):
    conf = lake[0]
    args = make(tmp_path)
    if "conf" in args:
        assert "DRIFTREC_TEST_UNSET_KEY" not in os.environ
        conf = make_conf(Path(conf.lakehouse.root), *args["conf"])
    before = _state(spark, conf)
    job = IngestJob(spark, conf, now=NOW)
    with pytest.raises(error, match=match):
        job.run(job.plan(events=args.get("events"), items=args.get("items"), fmt=args.get("fmt", "csv")))
    assert _state(spark, conf) == before
