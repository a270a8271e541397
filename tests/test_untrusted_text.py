"""Text from users (run ids, paths, dates) never becomes SQL or TOML syntax: predicates built by driftrec.sqltext,
warehouse query parameters checked, ``--lakehouse`` set as given."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from driftrec import lakehouse, sqltext
from driftrec.jobargs import base_parser, config_from_args
from driftrec.tables import EVALUATION_RUNS
from driftrec.warehouse import render
from tests.conftest import make_conf

INJECTION = "x' OR '1'='1"


def test_literals_cannot_leave_their_quotes():
    assert sqltext.literal("ml-latest-small-20261202T101500-ab12cd") == "'ml-latest-small-20261202T101500-ab12cd'"
    assert sqltext.literal(INJECTION) == "CAST(X'7827204F52202731273D2731' AS STRING)"
    assert sqltext.literal("back\\slash") == "CAST(X'6261636B5C736C617368' AS STRING)"
    assert sqltext.literal(dt.date(2026, 1, 2)) == "DATE'2026-01-02'"
    assert sqltext.literal(dt.datetime(2026, 1, 2, 3, 4, 5)) == "TIMESTAMP'2026-01-02 03:04:05'"
    assert [sqltext.literal(v) for v in (7, True, None, 0.5)] == ["7", "TRUE", "NULL", "0.5"]
    assert sqltext.equals("run_id", INJECTION) == f"run_id = {sqltext.literal(INJECTION)}"
    assert sqltext.between("ds", dt.date(2026, 1, 1), dt.date(2026, 1, 3)) == \
        "ds >= DATE'2026-01-01' AND ds <= DATE'2026-01-03'"
    assert sqltext.is_in("t.event_date", [dt.date(2026, 1, 1)]) == "t.event_date IN (DATE'2026-01-01')"
    assert sqltext.delta_path("/a`b") == "delta.`/a``b`"
    for bad in ("ds = 1 OR 1", "x;", "a b"):
        with pytest.raises(ValueError, match="not a plain column name"):
            sqltext.column(bad)
    with pytest.raises(TypeError):
        sqltext.literal(object())
    with pytest.raises(ValueError):
        sqltext.literal(float("nan"))


def test_literals_read_back_as_the_value(spark):
    values = [INJECTION, "back\\slash", 'dq"', "tab\there", "new\nline", "ünï ☃", "", "plain text-1.2:3/4@5+6"]
    sql = ", ".join(f"{sqltext.literal(v)} AS c{i}" for i, v in enumerate(values))
    assert list(spark.sql(f"SELECT {sql}").first()) == values
    # whatever the parser does with backslashes
    spark.conf.set("spark.sql.parser.escapedStringLiterals", "true")
    try:
        assert list(spark.sql(f"SELECT {sql}").first()) == values
    finally:
        spark.conf.unset("spark.sql.parser.escapedStringLiterals")


def test_an_evaluation_run_id_replaces_only_its_own_rows(spark, tmp_path):
    """Issue 20: the run id ``x' OR '1'='1`` wiped every other run's rows from evaluation_runs."""
    from jobs.evaluate import EvaluationJob

    conf = make_conf(tmp_path / "lake")
    table = pd.DataFrame([{"protocol": "temporal", "system": "popularity", "segment": "all", "seed": 7, "k": 10,
                           "metric": "recall", "value": 0.1, "users": 5}])
    for run_id in ("other-run", INJECTION, INJECTION, "third"):  # the injected id twice: a rerun replaces itself
        EvaluationJob(spark, conf, "tiny", run_id).write(table, {})
    runs = sorted(r["run_id"] for r in lakehouse.read_table(spark, conf, EVALUATION_RUNS).collect())
    assert runs == sorted(["other-run", INJECTION, "third"])


def test_warehouse_query_parameters_are_dates_and_integers():
    tables = {"recommendations": "r", "items": "i", "user_drift": "d"}
    q = render("user_list", tables, ds=dt.date(2026, 1, 2), user_id=7)
    assert "DATE '2026-01-02'" in q and "r.user_id = 7" in q
    assert "DATE '2026-01-02'" in render("migration_targets", tables, ds="2026-01-02")
    for params in ({"ds": "2026-01-02' OR '1'='1", "user_id": 7}, {"ds": dt.date(2026, 1, 2), "user_id": "7 OR 1=1"},
                   {"ds": dt.date(2026, 1, 2), "user_id": True}):
        with pytest.raises(ValueError, match="expected an integer or a date"):
            render("user_list", tables, **params)


@pytest.mark.parametrize("root", ["/tmp/a lake/x", "/tmp/tab\there", '/tmp/quo"te', "/tmp/it's", "/tmp/back\\slash",
                                  "/tmp/x\"\nlakehouse.database='evil'"])
def test_the_lakehouse_flag_is_taken_as_given(root):
    args = base_parser("t").parse_args(["--lakehouse", root, "--set", 'lakehouse.database="db1"'])
    conf = config_from_args(args)
    assert (conf.lakehouse.root, conf.lakehouse.database) == (root, "db1")
    assert conf.table_path("events") == f"{root}/events"
