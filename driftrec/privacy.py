"""What kind of user ids a lakehouse stores, recorded on the ``events`` table as the property ``driftrec.user_ids``.

Ingest records it before it writes (:func:`record_ingest`): ``raw`` when ids are stored as given, ``pseudonymised``
when keyed pseudonyms replace them (``privacy.pseudonymise_users``), ``mixed`` when pseudonymisation was switched on
after raw ids were stored. Raw ids are refused on a lakehouse that holds pseudonyms (they would put the very ids
pseudonymisation hides beside them). Forget-user reads it (:func:`stored_ids`) to delete the ids as they are stored:
by pseudonym only on a pseudonymised lakehouse, so the raw id never reaches a predicate, a Delta commit or a log;
and it refuses to run without the key on one, where raw ids would match nothing and erase nothing.

A lakehouse ingested before this property existed has none; forget-user then trusts ``privacy.pseudonymise_users``
(with it on, it deletes by pseudonym only) as long as the ids so formed match event rows, and refuses before any
delete when they match none (:func:`check_unrecorded`): an erasure that looked for the wrong form of the ids would
delete nothing and look like success.
"""

from __future__ import annotations

import os

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import Config, ConfigError
from driftrec.tables import EVENTS

PROPERTY = "driftrec.user_ids"
RAW, PSEUDONYMISED, MIXED = "raw", "pseudonymised", "mixed"


class PrivacyModeError(ConfigError):
    """The run's ``privacy.pseudonymise_users`` does not fit the ids the lakehouse stores."""


class UnverifiedErasureError(PrivacyModeError):
    """An erasure on a lakehouse without the record matched no event: it may have looked for the wrong form of id."""


def recorded(spark: SparkSession, conf: Config) -> str | None:
    """The recorded kind of stored user ids; ``None`` when no events table or no record exists."""
    if not lakehouse.table_exists(spark, conf, EVENTS):
        return None
    return lakehouse.table_properties(spark, conf, EVENTS).get(PROPERTY)


def after_ingest(current: str | None, pseudonymised: bool) -> str:
    """The kind of ids stored once an ingest (pseudonymising or not) has written into a lakehouse of ``current``."""
    if not pseudonymised:
        if current in (PSEUDONYMISED, MIXED):
            raise PrivacyModeError(
                f"this lakehouse stores pseudonymised user ids (events property {PROPERTY}={current}): ingesting "
                "raw ids into it is refused; set privacy.pseudonymise_users=true with the same key")
        return RAW
    return MIXED if current in (RAW, MIXED) else PSEUDONYMISED


def record_ingest(spark: SparkSession, conf: Config, pseudonymised: bool) -> str:
    """Check an ingest against the record and update it before the ingest writes; the kind now stored."""
    current = recorded(spark, conf)
    new = after_ingest(current, pseudonymised)
    if new != current:
        lakehouse.set_table_properties(spark, conf, EVENTS, {PROPERTY: new})
    return new


def stored_ids(spark: SparkSession, conf: Config, user_ids: list[int]) -> list[int]:
    """The ids to delete for ``user_ids`` (raw ids, as a request names them), as this lakehouse stores them."""
    kind = recorded(spark, conf)
    if not conf.privacy.pseudonymise_users:
        if kind in (PSEUDONYMISED, MIXED):
            raise PrivacyModeError(
                f"forget-user: this lakehouse stores pseudonymised user ids (events property {PROPERTY}={kind}), "
                "so raw ids would match nothing and nothing would be erased: run with "
                f"--set privacy.pseudonymise_users=true and the pseudonym key in ${conf.privacy.pseudonym_key_env}")
        return sorted(set(user_ids))
    if kind == RAW:
        return sorted(set(user_ids))  # nothing was pseudonymised yet: the ids are stored as given
    from driftrec.pseudonym import key_from_env, pseudonymise_id

    key = key_from_env(conf)
    pseudonyms = {pseudonymise_id(u, key) for u in user_ids}
    # mixed: rows from before pseudonymisation hold the raw ids themselves (already stored, so no new exposure)
    return sorted(pseudonyms | set(user_ids)) if kind == MIXED else sorted(pseudonyms)


def check_unrecorded(spark: SparkSession, conf: Config, user_ids: list[int], stored: list[int]) -> None:
    """Refuse, before any delete, an erasure that would match no event on a lakehouse without the record.

    ``user_ids``: the ids as the request names them; ``stored``: the ids the run will delete (:func:`stored_ids`).
    Nothing to check where the record exists (the ids' form is known) or no events table does. Without it, when
    ``stored`` matches no event row: run without ``privacy.pseudonymise_users`` but with the pseudonym key set, the
    pseudonyms are counted too, and a match refuses with :class:`PrivacyModeError` naming the flag; otherwise
    :class:`UnverifiedErasureError`, since "not here" cannot be told from "stored in the other form". The raw ids
    reach only a read's filter, and only where they are what the run would delete anyway (the flag off); no error
    names an id.
    """
    if not lakehouse.table_exists(spark, conf, EVENTS) or recorded(spark, conf) is not None:
        return
    events = lakehouse.read_table(spark, conf, EVENTS).select("user_id")
    if events.where(F.col("user_id").isin(stored)).limit(1).count():
        return
    flag, env = conf.privacy.pseudonymise_users, conf.privacy.pseudonym_key_env
    unrecorded = (f"this lakehouse does not record which form of user ids it stores (events property {PROPERTY} "
                  "is absent: it was ingested before the record existed)")
    checked, note = ("their pseudonyms", "") if flag else (
        "the ids as given", f"; no pseudonym key is set in ${env} to check whether they are stored pseudonymised")
    if not flag and os.environ.get(env):
        from driftrec.pseudonym import PseudonymKeyError, key_from_env, pseudonymise_id

        try:
            key = key_from_env(conf)
        except PseudonymKeyError:
            key = None
        if key is not None:
            pseudonyms = sorted({pseudonymise_id(u, key) for u in user_ids})
            if events.where(F.col("user_id").isin(pseudonyms)).limit(1).count():
                raise PrivacyModeError(
                    f"forget-user: {unrecorded}; the {len(user_ids)} id(s) given match no event row, but their "
                    f"pseudonyms under the key in ${env} do: this lakehouse stores pseudonymised ids. Nothing was "
                    "deleted: run with --set privacy.pseudonymise_users=true")
            checked, note = f"the ids as given and their pseudonyms under the key in ${env}", ""
    path = conf.table_path(EVENTS.logical)
    raise UnverifiedErasureError(
        f"forget-user: for the {len(user_ids)} id(s) given, {checked} match no event row, and {unrecorded}{note}. "
        "An erasure that matches nothing cannot be told from one that looked for the wrong form of id, so nothing "
        f"was deleted. Record the form once, e.g. ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('{PROPERTY}' = "
        f"'{RAW}') (or '{PSEUDONYMISED}', then run with --set privacy.pseudonymise_users=true and the key in "
        f"${env}), and rerun: with the form recorded, ids found nowhere are erased as absent.")
