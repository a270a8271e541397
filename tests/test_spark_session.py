"""The local session's console: Spark's stage bars only where they redraw in place (a terminal)."""

from __future__ import annotations

import io
import os
import sys

import pytest

from driftrec import spark as spark_module


def test_stage_bars_follow_whether_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a CI pipe
    assert spark_module._console_is_terminal() is False
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        assert spark_module._console_is_terminal() is True
    os.close(leader)


def test_the_test_session_draws_no_stage_bars(spark):
    if sys.__stderr__.isatty() and sys.stderr is sys.__stderr__:
        pytest.skip("pytest runs with -s on a terminal: the bars are wanted there")
    assert spark.conf.get("spark.ui.showConsoleProgress") == "false"


def test_known_harmless_warnings_are_off_the_console_and_others_stay(spark):
    from driftrec.spark import KNOWN_HARMLESS

    jvm = spark.sparkContext._jvm
    manager = jvm.org.apache.logging.log4j.LogManager
    for name in KNOWN_HARMLESS:
        assert str(manager.getLogger(name).getLevel()) == "ERROR", name
    # Every other logger keeps the session's WARN: a warning that matters still shows.
    assert str(manager.getLogger("org.apache.spark.sql.delta.DeltaLog").getLevel()) == "WARN"
    assert str(manager.getRootLogger().getLevel()) == "WARN"
