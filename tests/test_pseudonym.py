"""Pseudonymised ingest: keyed user ids on real Delta tables, stable across reruns, the key never leaks."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.pseudonym import (
    PseudonymKeyError,
    key_from_env,
    pseudonymise_id,
    pseudonymise_quarantine,
    pseudonymise_raw_events,
    pseudonymise_texts,
    replace_json_field,
)
from driftrec.tables import EVENTS, INGEST_LOG, QUARANTINE
from driftrec.validation import validate_events
from jobs.ingest import IngestJob
from tests.conftest import make_conf
from tests.test_ingest import movielens_csv

NOW = datetime(2026, 11, 29, 12, 0, 0)
ENV = "DRIFTREC_TEST_PSEUDONYM_KEY"
KEY = "k3y-Secret-0123456789-xyz"
KEY2 = "another-secret-key-98765"

EVENTS_CSV = (
    "user_id,item_id,timestamp,event_type,weight\n"
    "1,10,1700000000,view,1\n"
    "1,11,1700000100,click,1\n"
    "2,10,1700000200,view,1\n"
    "3,12,1700003600,purchase,2\n"
    "007,13,1700007200,view,1\n"  # the same user as the next row
    "7,14,1700007300,view,1\n"
    "5,10,yesterday,view,1\n"  # quarantined: bad timestamp, valid user id
    "alice,10,1700000000,view,1\n"  # quarantined: non-numeric user id
    "-4,10,1700000000,view,1\n"  # quarantined: negative user id
)


def _conf(root: Path):
    return make_conf(root, "privacy.pseudonymise_users=true", f'privacy.pseudonym_key_env="{ENV}"')


def _csv(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EVENTS_CSV)
    return path


def _version(spark, conf, logical: str) -> int:
    return DeltaTable.forPath(spark, conf.table_path(logical)).history(1).first()["version"]


def _text_pseudonym(text: str, key: bytes) -> int:
    return int(pseudonymise_texts(pd.Series([text]), key)[0])


# -- plain Python ---------------------------------------------------------------------------------------------------
def test_kernel_matches_definition_and_key_checks(monkeypatch):
    key = KEY.encode()
    want = int.from_bytes(hmac.new(key, b"42", hashlib.sha256).digest()[:8], "big") & ((1 << 63) - 1)
    assert pseudonymise_id(42, key) == pseudonymise_id("042", key) == want
    assert pseudonymise_id(42, KEY2.encode()) != want
    assert list(pseudonymise_texts(pd.Series(["42", None, "42"]), key)) == [want, pd.NA, want]
    with pytest.raises(TypeError):
        pseudonymise_id(True, key)

    conf = _conf(Path("/nonexistent"))
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(PseudonymKeyError, match=ENV):
        key_from_env(conf)
    monkeypatch.setenv(ENV, "short-key")
    with pytest.raises(PseudonymKeyError, match=ENV) as err:
        key_from_env(conf)
    assert "short-key" not in str(err.value)
    monkeypatch.setenv(ENV, KEY)
    assert key_from_env(conf) == key

    row = '{"userId":"4","movieId":"20","note":"a, \\"b\\" }","userId2":"4"}'
    assert replace_json_field(row, "userId", "99") == '{"userId":"99","movieId":"20","note":"a, \\"b\\" }","userId2":"4"}'
    assert replace_json_field(row, "absent", "99") == row


# -- Spark + Delta --------------------------------------------------------------------------------------------------
def test_pseudonymised_ingest_rerun_and_no_key_leak(spark, tmp_path, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="driftrec")
    monkeypatch.setenv(ENV, KEY)
    key = KEY.encode()
    conf = _conf(tmp_path / "lh")
    src = _csv(tmp_path / "in" / "events.csv")
    job = IngestJob(spark, conf, now=NOW)
    report = job.run(job.plan(events=[str(src)]))
    print(report.summary())
    assert (report.total("rows_read"), report.total("rows_inserted"), report.total("rows_quarantined")) == (9, 6, 3)

    # (1) stored ids are the keyed pseudonyms: distinct per raw user, shared by a user's events, non-negative.
    ev = (
        lakehouse.read_table(spark, conf, EVENTS)
        .select("event_id", "user_id", "item_id", "event_type", F.unix_micros("event_ts").alias("micros"))
        .collect()
    )
    pseudo = {raw: pseudonymise_id(raw, key) for raw in (1, 2, 3, 7)}
    assert len(set(pseudo.values())) == 4 and all(p >= 0 for p in pseudo.values())
    assert not set(pseudo.values()) & {1, 2, 3, 7}
    per_user = {}
    for r in ev:
        per_user[r["user_id"]] = per_user.get(r["user_id"], 0) + 1
    assert per_user == {pseudo[1]: 2, pseudo[2]: 1, pseudo[3]: 1, pseudo[7]: 2}
    # The dedup key is derived from the pseudonym, so a dictionary over small raw ids does not invert it.
    raw_of = {v: k for k, v in pseudo.items()}
    for r in ev:
        rest = f"|{r['item_id']}|{r['event_type']}|{r['micros']}"
        assert r["event_id"] == hashlib.sha256(f"{r['user_id']}{rest}".encode()).hexdigest()
        assert r["event_id"] != hashlib.sha256(f"{raw_of[r['user_id']]}{rest}".encode()).hexdigest()

    # (6) quarantined rows: the raw user id is replaced in row_content (and in a reason quoting it).
    q = {json.loads(r["row_content"])["user_id"]: r for r in lakehouse.read_table(spark, conf, QUARANTINE).collect()}
    assert set(q) == {str(pseudonymise_id(5, key)), str(_text_pseudonym("alice", key)), str(pseudonymise_id(-4, key))}
    bad_ts = q[str(pseudonymise_id(5, key))]
    assert bad_ts["reason"] == "unparsable timestamp 'yesterday'"
    assert json.loads(bad_ts["row_content"]) == {
        "user_id": str(pseudonymise_id(5, key)), "item_id": "10", "timestamp": "yesterday", "event_type": "view",
        "weight": "1",
    }
    assert q[str(_text_pseudonym("alice", key))]["reason"] == f"non-numeric user_id '{_text_pseudonym('alice', key)}'"
    assert q[str(pseudonymise_id(-4, key))]["reason"] == f"negative user_id '{pseudonymise_id(-4, key)}'"
    assert not any("alice" in r["row_content"] + r["reason"] or "-4" in r["row_content"] + r["reason"] for r in q.values())

    # (2) same file, same key: same pseudonyms, same event_ids -> nothing inserted, updated or quarantined anew.
    again = job.run(job.plan(events=[str(src)]))
    print(again.summary())
    assert again.total("rows_inserted") == 0 and again.total("rows_updated") == 0
    assert lakehouse.read_table(spark, conf, EVENTS).count() == 6
    assert lakehouse.read_table(spark, conf, QUARANTINE).count() == 3

    # (5) the key appears in no output, table, history or query plan.
    frame = job.plan(events=[str(src)])[0].frame
    transformed = pseudonymise_raw_events(frame, key)
    _, bad = validate_events(
        transformed, event_types=conf.ingest.event_types, timestamp_format="epoch_s", now=NOW, future_tolerance_s=0
    )
    quarantined = pseudonymise_quarantine(bad, key, "user_id")
    texts = [
        transformed._jdf.queryExecution().toString(),
        quarantined._jdf.queryExecution().toString(),
    ]
    assert all("pseudonym(" in t and "Physical Plan" in t for t in texts)  # the plans do show the UDF
    for spec in (EVENTS, QUARANTINE, INGEST_LOG):
        texts.append(str(lakehouse.read_table(spark, conf, spec).collect()))
        texts.append(str(DeltaTable.forPath(spark, conf.table_path(spec.logical)).history().collect()))
    out, err = capfd.readouterr()
    texts += [out, err, caplog.text, "\n".join(r.getMessage() for r in caplog.records)]
    assert "ingest run" in out and caplog.records  # the captures did capture the job's output
    for text in texts:
        assert KEY not in text and key.hex() not in text

    # (4, existing lakehouse) no key: the run fails before writing anything.
    versions = {t: _version(spark, conf, t) for t in ("events", "quarantine", "ingest_log")}
    monkeypatch.delenv(ENV)
    with pytest.raises(PseudonymKeyError, match=ENV):
        job.run(job.plan(events=[str(src)]))
    assert {t: _version(spark, conf, t) for t in ("events", "quarantine", "ingest_log")} == versions


def test_missing_key_creates_nothing(spark, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    conf = _conf(tmp_path / "lh")
    job = IngestJob(spark, conf, now=NOW)
    with pytest.raises(PseudonymKeyError, match=ENV):
        job.run(job.plan(events=[str(_csv(tmp_path / "in" / "events.csv"))]))
    assert not lakehouse.table_exists(spark, conf, EVENTS)
    assert not Path(conf.table_path("events")).exists()


def test_other_key_other_ids_movielens(spark, tmp_path, monkeypatch):
    """(3) a different key gives different ids; MovieLens quarantine rows hide ``userId``."""
    monkeypatch.setenv(ENV, KEY2)
    key2, key1 = KEY2.encode(), KEY.encode()
    conf = _conf(tmp_path / "lh")
    job = IngestJob(spark, conf, now=NOW)
    job.run(job.plan(movielens=str(movielens_csv(tmp_path / "ml"))))
    ids = {r["user_id"] for r in lakehouse.read_table(spark, conf, EVENTS).select("user_id").collect()}
    assert ids == {pseudonymise_id(u, key2) for u in (1, 2, 3)}
    assert not ids & {pseudonymise_id(u, key1) for u in (1, 2, 3)}
    q = lakehouse.read_table(spark, conf, QUARANTINE).filter("reason = 'NaN weight'").first()
    assert q["row_content"] == f'{{"userId":"{pseudonymise_id(4, key2)}","movieId":"20","rating":"NaN","timestamp":"964982703"}}'
