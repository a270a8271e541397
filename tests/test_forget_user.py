"""forget-user on a real Delta lakehouse: the user's rows leave every user table and quarantine, the others' rows stay,
and after VACUUM no Parquet file under any table directory holds the user id any more (before it, some do)."""

from __future__ import annotations

import datetime as dt
from functools import reduce
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from driftrec import lakehouse, privacy
from driftrec.tables import (
    EVENTS,
    QUARANTINE,
    RECOMMENDATIONS,
    TRAINING_SEQUENCES,
    USER_DRIFT,
    USER_INTEREST,
    USER_LAST_EVENT,
    USER_TRANSITIONS,
    TableSpec,
)
from jobs.forget_user import (
    ForgetUserJob,
    add_arguments,
    read_users_file,
    user_ids_from_args,
    user_tables,
)
from tests.conftest import make_conf

KEEP_A, GONE, KEEP_B = 987654321001, 987654321002, 987654321003  # distinctive digits, searchable in raw files
USERS = (KEEP_A, GONE, KEEP_B)
D1, D2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
TS = dt.datetime(2026, 11, 1, 12, 0)
USER_TABLES = (EVENTS, USER_INTEREST, USER_DRIFT, RECOMMENDATIONS, TRAINING_SEQUENCES, USER_LAST_EVENT,
               USER_TRANSITIONS)
# The forgotten user's rows written below, per table.
GONE_ROWS = {"events": 3, "user_interest": 2, "user_drift": 2, "recommendations": 4, "training_sequences": 2,
             "user_last_event": 1, "user_transitions": 2, "quarantine": 3}


def _events(day, n):
    return [dict(event_id=f"e-{u}-{day}-{i}", user_id=u, item_id=10 + i, event_type="view", event_ts=TS,
                 weight=1.0, source="events.csv", ingested_at=TS, event_date=day) for u in USERS for i in range(n)]


def _interest(p):
    return [dict(user_id=u, category=c, p=p, recent_count=1.0, long_term_count=2.0, as_of=D1)
            for u in USERS for c in ("Drama", "Comedy")]


def _drift(day):
    return [dict(ds=day, user_id=u, js_divergence=0.1, day_shift=0.0, rising_category="Drama", rising_delta=0.1,
                 falling_category="Comedy", falling_delta=-0.1, migrating=False, n_events=2.0) for u in USERS]


def _recs(day):
    return [dict(ds=day, user_id=u, rank=r, item_id=10 + r, score=0.5, model_version=1, reason="popular")
            for u in USERS for r in (1, 2)]


def _sequences(day):
    return [dict(ds=day, user_id=u, chunk=0, split="train", item_ids=[10, 11], event_ts=[1, 2],
                 interest_categories=["Drama"], interest_p=[1.0]) for u in USERS]


def _last_event(ts):
    return [dict(user_id=u, item_id=11, event_ts=ts, event_id=f"e-{u}-last") for u in USERS]


def _transitions(to_cat, day):
    return [dict(user_id=u, from_cat="Drama", to_cat=to_cat, count=1.0, prob=0.5, global_weight=0.5,
                 updated_through=day) for u in USERS]


def _quarantine(rows):
    return [dict(quarantine_id=f"q{i}-{r[:12]}", target="events", source="src", row_content=r, reason="bad",
                 ingested_at=TS) for i, r in enumerate(rows)]


QUARANTINE_1 = [  # the user field as each kind of source names it (generic, MovieLens CSV, ml-100k/.dat)
    f'{{"user_id":"{GONE}","item_id":"10","timestamp":"x"}}',
    f'{{"userId":"{GONE}","movieId":"10","rating":"abc","timestamp":"1"}}',
    f'{{"user":" {GONE} ","item":"10","rating":"1","ts":"x"}}',
    f'{{"user_id":"{KEEP_A}","item_id":"10","timestamp":"x"}}',
]
QUARANTINE_2 = [
    f'{{"userId":"{KEEP_B}","movieId":"10","rating":"abc","timestamp":"1"}}',
    '{"user_id":"x","item_id":"10","timestamp":"1"}',
    "not json at all",
]


def _df(spark, spec: TableSpec, rows):
    return spark.createDataFrame(rows, schema=spec.schema)


def _build(spark, conf) -> None:
    """Every user table in two or more commits (appends mostly: they are the cheapest), so replaced files exist."""
    path = conf.table_path
    lakehouse.append(spark, conf, EVENTS, _df(spark, EVENTS, _events(D1, 2)))
    lakehouse.append(spark, conf, EVENTS, _df(spark, EVENTS, _events(D2, 1)))
    privacy.record_ingest(spark, conf, pseudonymised=False)  # as an ingest records it: raw ids
    lakehouse.append(spark, conf, USER_INTEREST, _df(spark, USER_INTEREST, _interest(0.5)))
    lakehouse.merge_upsert(spark, conf, USER_INTEREST, _df(spark, USER_INTEREST, _interest(0.4)),
                           update_when="true", metrics=False)  # rewrites the files: old ones keep every user
    for day in (D1, D2):
        lakehouse.replace_where(spark, conf, USER_DRIFT, _df(spark, USER_DRIFT, _drift(day)), f"ds = DATE'{day}'")
        lakehouse.append(spark, conf, RECOMMENDATIONS, _df(spark, RECOMMENDATIONS, _recs(day)))
        lakehouse.append(spark, conf, TRAINING_SEQUENCES, _df(spark, TRAINING_SEQUENCES, _sequences(day)))
    lakehouse.append(spark, conf, USER_LAST_EVENT, _df(spark, USER_LAST_EVENT, _last_event(TS)))
    lakehouse.merge_upsert(spark, conf, USER_LAST_EVENT, _df(spark, USER_LAST_EVENT, _last_event(TS + dt.timedelta(1))),
                           update_when="s.event_ts > t.event_ts", metrics=False)
    lakehouse.append(spark, conf, USER_TRANSITIONS, _df(spark, USER_TRANSITIONS, _transitions("Comedy", D1)))
    # Deletion vectors on one table: its DELETE only marks rows, so the job must purge them from the live files.
    spark.sql(f"ALTER TABLE delta.`{path('user_transitions')}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)")
    lakehouse.append(spark, conf, USER_TRANSITIONS, _df(spark, USER_TRANSITIONS, _transitions("Drama", D2)))
    lakehouse.append(spark, conf, QUARANTINE, _df(spark, QUARANTINE, _quarantine(QUARANTINE_1)))
    lakehouse.append(spark, conf, QUARANTINE, _df(spark, QUARANTINE, _quarantine(QUARANTINE_2)))


def _counts(spark, conf) -> dict[str, dict]:
    """Rows per user per table through Delta reads; quarantine per user id mentioned in the row (or 'other')."""
    per_table = [
        lakehouse.read_table(spark, conf, spec).groupBy("user_id").count().withColumn("table", F.lit(spec.logical))
        for spec in USER_TABLES
    ]
    out = {spec.logical: {} for spec in USER_TABLES}
    for r in reduce(DataFrame.unionByName, per_table).collect():  # one Spark job for all tables
        out[r["table"]][r["user_id"]] = r["count"]
    quarantine = [r["row_content"] for r in lakehouse.read_table(spark, conf, QUARANTINE).collect()]
    out["quarantine"] = {u: sum(str(u) in q for q in quarantine) for u in USERS}
    out["quarantine"]["other"] = sum(not any(str(u) in q for u in USERS) for q in quarantine)
    return out


def _files_mentioning(table_dir: str, user: int) -> list[Path]:
    """Every Parquet file under the table directory, live or not, read directly, whose values mention ``user``."""
    needle = str(user)
    return [f for f in sorted(Path(table_dir).rglob("*.parquet")) if needle in repr(pq.read_table(f).to_pylist())]


def _version(spark, conf, spec) -> int:
    return lakehouse.table_version(spark, conf, spec)


@pytest.fixture(scope="module")
def forgotten(spark, tmp_path_factory):
    """One lakehouse, the user deleted without VACUUM, the raw files searched, then VACUUM (retention 0)."""
    conf = make_conf(tmp_path_factory.mktemp("forget") / "lakehouse")
    _build(spark, conf)
    before = _counts(spark, conf)
    job = ForgetUserJob(spark, conf)
    deleted = job.run([GONE], vacuum=False)
    still_on_disk = {s.logical: _files_mentioning(conf.table_path(s.logical), GONE) for s in job.targets()}
    vacuumed = job.vacuum_only(retention_hours=0)
    return dict(conf=conf, job=job, before=before, deleted=deleted, still_on_disk=still_on_disk, vacuumed=vacuumed)


def test_user_tables_come_from_the_table_specs():
    assert {s.logical for s in user_tables()} == {s.logical for s in USER_TABLES}
    extra = TableSpec("future", EVENTS.schema)
    assert user_tables((QUARANTINE, extra)) == (extra,)


def test_every_user_table_and_quarantine_is_targeted(forgotten):
    assert {s.logical for s in forgotten["job"].targets()} == set(GONE_ROWS)


def test_the_users_rows_are_deleted_and_the_others_kept(spark, forgotten):
    assert {t.table: t.rows_deleted for t in forgotten["deleted"].tables} == GONE_ROWS
    before, after = forgotten["before"], _counts(spark, forgotten["conf"])
    for table, counts in before.items():
        assert counts[GONE] > 0 and after[table].get(GONE, 0) == 0, table
        kept = {u: n for u, n in counts.items() if u != GONE}
        assert {u: after[table].get(u, 0) for u in kept} == kept, table
    assert after["quarantine"] == {KEEP_A: 1, GONE: 0, KEEP_B: 1, "other": 2}


def test_deletion_vectors_are_purged_from_live_files(spark, forgotten):
    history = DeltaTable.forPath(spark, forgotten["conf"].table_path("user_transitions")).history()
    ops = [r["operation"] for r in history.select("operation").collect()]
    assert "REORG" in ops  # the DELETE wrote deletion vectors, so the rows were rewritten out of the live files


def test_no_parquet_file_holds_the_user_after_vacuum(forgotten):
    conf = forgotten["conf"]
    # Control: after the DELETE, before VACUUM, every table still has old files with the user: the search can fail.
    assert all(forgotten["still_on_disk"].values()), {t: len(f) for t, f in forgotten["still_on_disk"].items()}
    vacuumed = forgotten["vacuumed"]
    assert vacuumed.retention_hours == 0
    for t in vacuumed.tables:
        assert t.files_removed is not None and t.files_removed > 0, t
        assert _files_mentioning(conf.table_path(t.table), GONE) == [], t.table
        assert _files_mentioning(conf.table_path(t.table), KEEP_A), t.table  # the search does read the data


def test_rerun_is_idempotent(spark, forgotten):
    conf, job = forgotten["conf"], forgotten["job"]
    versions = {s.logical: _version(spark, conf, s) for s in job.targets()}
    again = job.run([GONE], retention_hours=0)
    assert again.rows_deleted == 0 and len(again.tables) == len(GONE_ROWS)
    assert all(t.files_removed is None for t in again.tables)  # nothing deleted, nothing to vacuum
    assert {s.logical: _version(spark, conf, s) for s in job.targets()} == versions  # no commit at all


def test_no_user_is_refused(tmp_path, conf):
    import argparse

    with pytest.raises(ValueError, match="no user ids given"):
        ForgetUserJob(None, conf).run([])
    with pytest.raises(ValueError, match="non-negative integers"):
        ForgetUserJob(None, conf).run([-1])

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="no user ids given"):
        user_ids_from_args(parser.parse_args([]))
    assert user_ids_from_args(parser.parse_args(["--vacuum-only"])) == []
    with pytest.raises(ValueError, match="takes no user ids"):
        user_ids_from_args(parser.parse_args(["--vacuum-only", "--user-id", "3"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--vacuum-only", "--no-vacuum"])

    ids = tmp_path / "ids.txt"
    ids.write_text("7\n\n# a comment\n 3 \n7\n")
    assert read_users_file(str(ids)) == [7, 3, 7]
    assert user_ids_from_args(parser.parse_args(["--users-file", str(ids), "--user-id", "9"])) == [3, 7, 9]
    ids.write_text("7\nseven\n")
    with pytest.raises(ValueError, match=r"ids.txt:2: not an integer"):
        read_users_file(str(ids))
    with pytest.raises(ValueError, match="cannot read users file"):
        read_users_file(str(tmp_path / "missing.txt"))

    from jobs.cli import main

    with pytest.raises(SystemExit, match="driftrec forget-user: no user ids given"):
        main(["forget-user", "--lakehouse", str(tmp_path / "lake")])


RAW_ID, KEY = 555000111, "k3y-Secret-0123456789-forget"
PSEUDO_CSV = (
    "user_id,item_id,timestamp,event_type,weight\n"
    f"{RAW_ID},10,1700000000,view,1\n"
    f"{RAW_ID},11,1700000100,click,1\n"
    "2,10,1700000200,view,1\n"
    f"{RAW_ID},12,yesterday,view,1\n"  # quarantined: bad timestamp
    "3,10,yesterday,view,1\n"  # quarantined
)


def _logs_mentioning(root: Path, needle: str) -> list[str]:
    """Every Delta commit file under the lakehouse whose text holds ``needle``."""
    return [str(f.relative_to(root)) for f in sorted(root.rglob("_delta_log/*.json")) if needle in f.read_text()]


def test_pseudonymised_erasure_deletes_by_pseudonym_only(spark, tmp_path, monkeypatch):
    """The raw id reaches no Delta commit (the DELETE predicate names the pseudonym only); without the privacy
    flag on a pseudonymised lakehouse, forget-user (and a raw ingest) is refused before any write."""
    from driftrec import privacy
    from driftrec.pseudonym import pseudonymise_id
    from jobs.ingest import IngestJob
    from tests.test_pseudonym import NOW

    root = tmp_path / "lake"
    conf = make_conf(root, "privacy.pseudonymise_users=true")
    monkeypatch.setenv(conf.privacy.pseudonym_key_env, KEY)
    src = tmp_path / "in" / "events.csv"
    src.parent.mkdir()
    src.write_text(PSEUDO_CSV)
    ingest = IngestJob(spark, conf, now=NOW)
    ingest.run(ingest.plan(events=[str(src)]))
    assert privacy.recorded(spark, conf) == privacy.PSEUDONYMISED
    pseudo, other = pseudonymise_id(RAW_ID, KEY.encode()), pseudonymise_id(2, KEY.encode())
    assert _logs_mentioning(root, str(RAW_ID)) == []  # ingest stored the pseudonym only
    assert _logs_mentioning(root, str(pseudo))  # control: the search finds ids in the commits' column stats

    # Without the flag the raw id would match nothing: refused, nothing written.
    plain = conf.model_copy(update={"privacy": conf.privacy.model_copy(update={"pseudonymise_users": False})})
    targets = ForgetUserJob(spark, conf).targets()
    versions = {s.logical: _version(spark, conf, s) for s in targets}
    with pytest.raises(privacy.PrivacyModeError, match=r"stores pseudonymised user ids .*pseudonymise_users=true"):
        ForgetUserJob(spark, plain).run([RAW_ID], vacuum=False)
    with pytest.raises(privacy.PrivacyModeError, match="ingesting raw ids into it is refused"):
        IngestJob(spark, plain, now=NOW).run(ingest.plan(events=[str(src)]))
    assert {s.logical: _version(spark, conf, s) for s in targets} == versions
    assert _logs_mentioning(root, str(RAW_ID)) == []

    report = ForgetUserJob(spark, conf).run([RAW_ID], vacuum=False)
    assert (report.table("events").rows_deleted, report.table("quarantine").rows_deleted) == (2, 1)
    assert {r["user_id"] for r in lakehouse.read_table(spark, conf, EVENTS).collect()} == {other}
    assert lakehouse.read_table(spark, conf, QUARANTINE).count() == 1
    assert _logs_mentioning(root, str(RAW_ID)) == []  # not in the DELETE commits either
    deletes = [r["operationParameters"]["predicate"] for spec in (EVENTS, QUARANTINE)
               for r in DeltaTable.forPath(spark, conf.table_path(spec.logical)).history().collect()
               if r["operation"] == "DELETE"]
    assert len(deletes) == 2 and all(str(pseudo) in p and str(RAW_ID) not in p for p in deletes)


def test_which_ids_are_deleted_follows_what_the_lakehouse_records():
    from driftrec.privacy import MIXED, PSEUDONYMISED, RAW, PrivacyModeError, after_ingest

    assert [after_ingest(None, False), after_ingest(RAW, False)] == [RAW, RAW]
    assert [after_ingest(None, True), after_ingest(PSEUDONYMISED, True)] == [PSEUDONYMISED, PSEUDONYMISED]
    assert [after_ingest(RAW, True), after_ingest(MIXED, True)] == [MIXED, MIXED]  # switched on after raw rows
    for current in (PSEUDONYMISED, MIXED):
        with pytest.raises(PrivacyModeError, match="refused"):
            after_ingest(current, False)


def test_mixed_lakehouse_forgets_raw_rows_and_pseudonyms(spark, tmp_path, monkeypatch):
    """Pseudonymisation switched on after raw ids were stored: both forms of the user go."""
    from driftrec import privacy
    from driftrec.pseudonym import pseudonymise_id
    from jobs.ingest import IngestJob
    from tests.test_pseudonym import NOW

    conf = make_conf(tmp_path / "lake", "privacy.pseudonymise_users=true")
    plain = conf.model_copy(update={"privacy": conf.privacy.model_copy(update={"pseudonymise_users": False})})
    monkeypatch.setenv(conf.privacy.pseudonym_key_env, KEY)
    src = tmp_path / "events.csv"
    src.write_text(PSEUDO_CSV)
    IngestJob(spark, plain, now=NOW).run(IngestJob(spark, plain, now=NOW).plan(events=[str(src)]))
    assert privacy.recorded(spark, conf) == privacy.RAW
    assert ForgetUserJob(spark, conf).stored_ids([RAW_ID]) == [RAW_ID]  # flag on, nothing pseudonymised yet
    src.write_text(PSEUDO_CSV.replace("1700000", "1700001"))  # new events of the same users
    IngestJob(spark, conf, now=NOW).run(IngestJob(spark, conf, now=NOW).plan(events=[str(src)]))
    assert privacy.recorded(spark, conf) == privacy.MIXED
    pseudo = pseudonymise_id(RAW_ID, KEY.encode())
    assert ForgetUserJob(spark, conf).stored_ids([RAW_ID]) == sorted({RAW_ID, pseudo})
    report = ForgetUserJob(spark, conf).run([RAW_ID], vacuum=False)
    assert report.table("events").rows_deleted == 4
    assert {r["user_id"] for r in lakehouse.read_table(spark, conf, EVENTS).collect()} == {
        2, pseudonymise_id(2, KEY.encode())}


def test_quarantine_condition_matches_as_ingestion_parses(spark):
    from jobs.forget_user import quarantine_condition

    rows = ['{"u":"7"}', '{"u":7}', '{"u":" 007 "}', '{"u":"7.0"}', '{"u":"8"}', '{"v":"7"}', '{"u":"x"}', "[7]", "7"]
    df = spark.createDataFrame([(r,) for r in rows], "row_content string")
    hit = [r["row_content"] for r in df.where(quarantine_condition([7, 9], ("u",))).collect()]
    assert sorted(hit) == sorted(rows[:4])
    assert df.where(~quarantine_condition([7], ("u", "v"))).count() == 4  # the condition is never null


def test_unrecorded_lakehouse_refuses_an_erasure_that_matches_nothing(spark, tmp_path, monkeypatch):
    """A lakehouse ingested before the ``driftrec.user_ids`` record: an erasure matching no event row is refused
    before any write, naming the privacy flag where the key shows the ids are pseudonymised; never a silent 0."""
    from driftrec.pseudonym import pseudonymise_id
    from jobs.ingest import IngestJob
    from tests.test_pseudonym import NOW

    root = tmp_path / "lake"
    conf = make_conf(root, "privacy.pseudonymise_users=true")
    plain = conf.model_copy(update={"privacy": conf.privacy.model_copy(update={"pseudonymise_users": False})})
    monkeypatch.setenv(conf.privacy.pseudonym_key_env, KEY)
    src = tmp_path / "events.csv"
    src.write_text(PSEUDO_CSV)
    IngestJob(spark, conf, now=NOW).run(IngestJob(spark, conf, now=NOW).plan(events=[str(src)]))
    spark.sql(f"ALTER TABLE delta.`{conf.table_path('events')}` UNSET TBLPROPERTIES ('{privacy.PROPERTY}')")
    assert privacy.recorded(spark, conf) is None  # as ingested by a release before the record
    targets = ForgetUserJob(spark, conf).targets()
    versions = {s.logical: _version(spark, conf, s) for s in targets}

    # Flag off, key set: the raw id matches nothing, its pseudonym matches: refused, naming the flag.
    with pytest.raises(privacy.PrivacyModeError, match=r"pseudonyms under the key .* do: this lakehouse stores "
                       r"pseudonymised ids. Nothing was deleted: run with --set privacy.pseudonymise_users=true") as e:
        ForgetUserJob(spark, plain).run([RAW_ID], vacuum=False)
    assert not isinstance(e.value, privacy.UnverifiedErasureError) and str(RAW_ID) not in str(e.value)
    # Flag on, an id stored nowhere: its pseudonym matches nothing, and nothing says that means "absent".
    with pytest.raises(privacy.UnverifiedErasureError, match="their pseudonyms match no event row, and this lakehouse "
                       "does not record which form"):
        ForgetUserJob(spark, conf).run([424242], vacuum=False)
    # Flag off, no key to check the other form: refused too.
    monkeypatch.delenv(conf.privacy.pseudonym_key_env)
    with pytest.raises(privacy.UnverifiedErasureError, match=r"the ids as given match no event row.*no pseudonym key "
                       r"is set in \$DRIFTREC_PSEUDONYM_KEY.*SET TBLPROPERTIES \('driftrec.user_ids' = 'raw'\)") as e:
        ForgetUserJob(spark, plain).run([RAW_ID], vacuum=False)
    assert str(RAW_ID) not in str(e.value)
    assert {s.logical: _version(spark, conf, s) for s in targets} == versions  # nothing deleted anywhere

    # The flag on and the key: the pseudonym matches, so the erasure runs.
    monkeypatch.setenv(conf.privacy.pseudonym_key_env, KEY)
    report = ForgetUserJob(spark, conf).run([RAW_ID], vacuum=False)
    assert (report.table("events").rows_deleted, report.table("quarantine").rows_deleted) == (2, 1)
    assert {r["user_id"] for r in lakehouse.read_table(spark, conf, EVENTS).collect()} == {
        pseudonymise_id(2, KEY.encode())}
    assert _logs_mentioning(root, str(RAW_ID)) == []


def test_no_rewind_restores_a_version_from_before_an_erasure(spark, tmp_path, caplog):
    """forget-user marks its commits; a restore to a version before one is refused even though the old files still
    exist (default retention), so a migration rewind recomputes instead and the user's rows never come back."""
    import logging

    from jobs.migrate import MigrationJob

    conf = make_conf(tmp_path / "lake")
    lakehouse.append(spark, conf, USER_INTEREST, _df(spark, USER_INTEREST, _interest(0.5)))
    lakehouse.append(spark, conf, USER_DRIFT, _df(spark, USER_DRIFT, _drift(D1)))
    before = {s.logical: _version(spark, conf, s) for s in (USER_INTEREST, USER_DRIFT)}
    assert lakehouse.restore_problem(spark, conf, USER_INTEREST, before["user_interest"]) is None  # control

    report = ForgetUserJob(spark, conf).run([GONE])  # retention 168 h: the old files stay
    assert report.table("user_interest").rows_deleted == 2 and report.table("user_interest").files_removed == 0
    for spec in (USER_INTEREST, USER_DRIFT):
        problem = lakehouse.restore_problem(spark, conf, spec, before[spec.logical])
        assert problem is not None and "erased from it at v" in problem and str(GONE) not in problem, spec.logical
        marks = [(r["operation"], r["userMetadata"]) for r in DeltaTable.forPath(spark, conf.table_path(spec.logical))
                 .history().collect() if r["version"] > before[spec.logical]]
        assert ("DELETE", lakehouse.ERASURE_MARK) in marks, marks
    assert lakehouse.read_table_at(spark, conf, USER_INTEREST, before["user_interest"]).where(
        F.col("user_id") == GONE).count() == 2  # the old version is still readable: Delta alone would restore it
    # Later commits without the mark do not hide it.
    lakehouse.append(spark, conf, USER_INTEREST,
                     _df(spark, USER_INTEREST, [r for r in _interest(0.3) if r["user_id"] == KEEP_A]))
    assert "erased" in lakehouse.restore_problem(spark, conf, USER_INTEREST, before["user_interest"])
    after = _version(spark, conf, USER_INTEREST)
    assert lakehouse.restore_problem(spark, conf, USER_INTEREST, after) is None  # a version after the erasure

    with caplog.at_level(logging.WARNING, logger="driftrec.migrate"):
        MigrationJob(spark, conf)._rewind(before, D1)
    assert any("cannot rewind" in m and "erased" in m for m in caplog.messages), caplog.messages
    for spec in (USER_INTEREST, USER_DRIFT):
        ops = [r["operation"] for r in DeltaTable.forPath(spark, conf.table_path(spec.logical)).history().collect()]
        assert "RESTORE" not in ops, spec.logical
        assert lakehouse.read_table(spark, conf, spec).where(F.col("user_id") == GONE).count() == 0, spec.logical


def test_a_commit_file_gone_from_the_log_counts_as_an_erasure(spark, tmp_path):
    """The erasure check reads each later commit's JSON file; one it cannot read cannot be shown harmless, so a
    restore across it is refused (the rewind then recomputes), while versions after the gap stay restorable."""
    conf = make_conf(tmp_path / "lake")
    for p in (0.5, 0.4, 0.3):
        lakehouse.append(spark, conf, USER_INTEREST, _df(spark, USER_INTEREST, _interest(p)))
    first = _version(spark, conf, USER_INTEREST) - 2
    assert lakehouse.erasure_after(spark, conf, USER_INTEREST, first) is None  # control: plain appends
    (Path(conf.table_path(USER_INTEREST.logical)) / "_delta_log" / f"{first + 1:020d}.json").unlink()
    assert lakehouse.erasure_after(spark, conf, USER_INTEREST, first) == first + 1
    assert lakehouse.erasure_after(spark, conf, USER_INTEREST, first + 1) is None
