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
