"""SQL text built from values: the one place a value becomes a literal inside a predicate string.

Where an API takes a Column, pass a Column (``F.col("run_id") == F.lit(run_id)``). Delta's ``replaceWhere`` and a
MERGE's ``target_filter`` take SQL text only; those predicates are built here, never by formatting a value into a
string at the call site (a run id ``x' OR '1'='1`` once replaced every other run's rows).

A string literal is quoted so that no setting changes its meaning: plain text (letters, digits, space and
``-_.:/@+``) is written as ``'text'``; anything else as ``CAST(X'<utf-8 hex>' AS STRING)``, which holds no quote or
backslash for the parser to interpret (``spark.sql.parser.escapedStringLiterals`` changes what ``\\'`` means).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable

_PLAIN = re.compile(r"[A-Za-z0-9 _\-.:/@+]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def literal(value) -> str:
    """``value`` as a Spark SQL literal: str, int, float, bool, date, datetime (naive = UTC as stored), None."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no SQL literal for the float {value!r}")
        return repr(value)
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return f"TIMESTAMP'{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, str):
        if _PLAIN.fullmatch(value):
            return f"'{value}'"
        return f"CAST(X'{value.encode('utf-8').hex().upper()}' AS STRING)"
    raise TypeError(f"no SQL literal for a {type(value).__name__}")


def column(name: str) -> str:
    """A column reference (``ds``, ``t.event_date``); anything but a plain (qualified) name is refused."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain column name: {name!r}")
    return name


def equals(name: str, value) -> str:
    """``name = <literal>``."""
    return f"{column(name)} = {literal(value)}"


def between(name: str, low, high) -> str:
    """``name >= low AND name <= high`` (both ends included)."""
    return f"{column(name)} >= {literal(low)} AND {column(name)} <= {literal(high)}"


def is_in(name: str, values: Iterable) -> str:
    """``name IN (<literals>)``; an empty list is refused (``IN ()`` is not SQL)."""
    rendered = [literal(v) for v in values]
    if not rendered:
        raise ValueError(f"{name} IN (): no values")
    return f"{column(name)} IN ({', '.join(rendered)})"


def delta_path(location: str) -> str:
    """``delta.`<location>``` for SQL naming a table by its path; a backtick in the path is doubled."""
    return "delta.`" + location.replace("`", "``") + "`"
