"""Keyed pseudonyms for user ids: the first 8 bytes of HMAC-SHA256(key, decimal id), masked to a 63-bit long.

The key never enters a query plan: Spark has no HMAC built-in, and an HMAC assembled from ``sha2`` would carry the
key as a literal into ``explain`` output, the Spark UI and logs. The hash therefore runs in a pandas UDF whose
closure holds the key bytes (closures are pickled to the executors, not printed in plans). The same kernel serves
single ids on the driver (:func:`pseudonymise_id`, e.g. a forget-user request naming a raw id), so both agree.

The key comes from the environment variable ``privacy.pseudonym_key_env`` (:func:`key_from_env`), never from a
config file; nothing here logs, prints or reprs it. Same key, same pseudonyms: re-ingesting a file is a no-op.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from json.decoder import scanstring

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from driftrec.config import Config, ConfigError
from driftrec.validation import _id_check

MIN_KEY_BYTES = 16
_MASK_63 = (1 << 63) - 1


class PseudonymKeyError(ConfigError):
    """The pseudonym key is missing or too weak; the message names the variable, never the key."""


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"pseudonym key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"pseudonym key too short: {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
    return key


def key_from_env(conf: Config) -> bytes:
    """The key in ``$<privacy.pseudonym_key_env>`` as UTF-8 bytes (taken as is, not stripped).

    Raises :class:`PseudonymKeyError` naming the variable when it is unset, empty or shorter than 16 bytes.
    """
    name = conf.privacy.pseudonym_key_env
    value = os.environ.get(name)
    if not value:
        raise PseudonymKeyError(
            f"privacy.pseudonymise_users is on but the environment variable {name} holding the pseudonym key "
            "is not set (or empty)"
        )
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"the pseudonym key in environment variable {name} is too short: at least {MIN_KEY_BYTES} bytes needed"
        )
    return key


# -- plain-Python kernels (no Spark): the single definition of a pseudonym ------------------------------------------
def _hasher(key: bytes):
    base = hmac.new(key, digestmod=hashlib.sha256)  # keyed state computed once, copied per id

    def digest(text: str) -> int:
        h = base.copy()
        h.update(text.encode("utf-8"))
        return int.from_bytes(h.digest()[:8], "big") & _MASK_63

    return digest


def pseudonymise_id(raw_id: int | str, key: bytes) -> int:
    """Pseudonym of one integer id (an int or its decimal text, e.g. from a forget-user request)."""
    if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)):
        raise TypeError(f"user id must be an int or a decimal string, got {type(raw_id).__name__}")
    return _hasher(_check_key(key))(str(int(raw_id)))


def pseudonymise_texts(texts: pd.Series, key: bytes) -> pd.Series:
    """Pseudonyms of canonical id texts (decimal strings; null stays null) as a nullable Int64 series."""
    digest = _hasher(_check_key(key))
    table = {t: digest(t) for t in texts.dropna().unique() if isinstance(t, str)}  # ids repeat within a batch
    return pd.Series(pd.array([table.get(t) if isinstance(t, str) else None for t in texts], dtype="Int64"),
                     index=texts.index)


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def replace_json_field(doc: str, field: str, value: str) -> str:
    """``doc`` (a JSON object) with the value of its top-level member ``field`` replaced by the JSON string
    ``value``; every other byte is kept as it was. A document without that member is returned unchanged.

    Errors never quote the document (it holds the raw id being hidden).
    """
    replacement = json.dumps(value)
    idx = _WS.match(doc, 0).end()
    if doc[idx : idx + 1] != "{":
        raise ValueError("row_content is not a JSON object")
    idx = _WS.match(doc, idx + 1).end()
    if doc[idx : idx + 1] == "}":
        return doc
    while True:
        if doc[idx : idx + 1] != '"':
            raise ValueError(f"row_content: member name expected at char {idx}")
        name, idx = scanstring(doc, idx + 1)
        idx = _WS.match(doc, idx).end()
        if doc[idx : idx + 1] != ":":
            raise ValueError(f"row_content: ':' expected at char {idx}")
        idx = _WS.match(doc, idx + 1).end()
        _, end = _DECODER.raw_decode(doc, idx)
        if name == field:  # every occurrence, should the name repeat
            doc = doc[:idx] + replacement + doc[end:]
            end = idx + len(replacement)
        idx = _WS.match(doc, end).end()
        sep = doc[idx : idx + 1]
        if sep == "}":
            return doc
        if sep != ",":
            raise ValueError(f"row_content: ',' or '}}' expected at char {idx}")
        idx = _WS.match(doc, idx + 1).end()


# -- Spark ----------------------------------------------------------------------------------------------------------
def _text_pseudonym_udf(key: bytes):
    """A pandas UDF string -> long; the key lives only in its closure."""
    key = _check_key(key)

    @pandas_udf(T.LongType())
    def pseudonym(texts: pd.Series) -> pd.Series:
        return pseudonymise_texts(texts, key)

    return pseudonym


def pseudonym_column(ids: Column, key: bytes) -> Column:
    """Pseudonyms of a column of integer user ids (long, or decimal strings): non-negative longs, null for null."""
    return _text_pseudonym_udf(key)(ids.cast("bigint").cast("string"))


def _require_columns(df: DataFrame, cols: list[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {missing} missing; found {df.columns}")


def pseudonymise_raw_events(raw: DataFrame, key: bytes, *, col_user: str = "user_id") -> DataFrame:
    """Raw events (string fields, see :mod:`driftrec.sources`) with every *valid* user id replaced by the decimal
    text of its pseudonym, before validation derives ``event_id`` from it. An id that validation will reject keeps
    its raw text, so the row is quarantined for the same reason (see :func:`pseudonymise_quarantine`)."""
    _require_columns(raw, [col_user])
    parsed, reason = _id_check(F.col(col_user), col_user)  # the very parse validation applies
    pseudo = _text_pseudonym_udf(key)(F.when(reason.isNull(), parsed.cast("string")))
    user = F.coalesce(pseudo.cast("string"), F.col(col_user)).alias(col_user)
    return raw.select(*[user if c == col_user else F.col(f"`{c}`") for c in raw.columns])


@pandas_udf(T.StringType())  # a type object, not DDL: no session needed at import
def _replace_user_in_rows(rows: pd.Series, replacements: pd.Series, fields: pd.Series) -> pd.Series:
    out = [
        replace_json_field(row, field, rep) if isinstance(row, str) and isinstance(rep, str) else row
        for row, rep, field in zip(rows, replacements, fields)
    ]
    return pd.Series(out, index=rows.index, dtype=object)


def pseudonymise_quarantine(
    bad: DataFrame, key: bytes, user_field: str, *, col_row: str = "row_content", col_reason: str = "reason"
) -> DataFrame:
    """Quarantined rows with the raw user id hidden: the ``user_field`` member of the row JSON becomes the decimal
    text of its pseudonym (the very ``user_id`` of the events table for an id that parses), and a reason quoting the
    raw id ("non-numeric user_id 'x'") quotes the pseudonym instead. Ids that do not parse are pseudonymised as
    their trimmed text; a blank id has nothing to hide and stays."""
    _require_columns(bad, [col_row, col_reason])
    raw = F.from_json(F.col(col_row), "map<string,string>").getItem(user_field)
    parsed, _ = _id_check(raw, "user_id")
    canonical = F.when(F.trim(raw) != "", F.coalesce(parsed.cast("string"), F.trim(raw)))
    pseudo = _text_pseudonym_udf(key)(canonical).cast("string")
    row = _replace_user_in_rows(F.col(col_row), pseudo, F.lit(user_field)).alias(col_row)
    reason = F.when(
        pseudo.isNotNull(),
        F.replace(
            F.col(col_reason),
            F.concat(F.lit("user_id '"), raw, F.lit("'")),
            F.concat(F.lit("user_id '"), pseudo, F.lit("'")),
        ),
    ).otherwise(F.col(col_reason)).alias(col_reason)
    out = {col_row: row, col_reason: reason}
    return bad.select(*[out.get(c, F.col(f"`{c}`")) for c in bad.columns])
