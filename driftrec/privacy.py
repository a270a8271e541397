"""What kind of user ids a lakehouse stores, recorded on the ``events`` table as the property ``driftrec.user_ids``.

Ingest records it before it writes (:func:`record_ingest`): ``raw`` when ids are stored as given, ``pseudonymised``
when keyed pseudonyms replace them (``privacy.pseudonymise_users``), ``mixed`` when pseudonymisation was switched on
after raw ids were stored. Raw ids are refused on a lakehouse that holds pseudonyms (they would put the very ids
pseudonymisation hides beside them). Forget-user reads it (:func:`stored_ids`) to delete the ids as they are stored:
by pseudonym only on a pseudonymised lakehouse, so the raw id never reaches a predicate, a Delta commit or a log;
and it refuses to run without the key on one, where raw ids would match nothing and erase nothing.

A lakehouse ingested before this property existed has none; forget-user then trusts ``privacy.pseudonymise_users``
and, with it on, deletes by pseudonym only.
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from driftrec import lakehouse
from driftrec.config import Config, ConfigError
from driftrec.tables import EVENTS

PROPERTY = "driftrec.user_ids"
RAW, PSEUDONYMISED, MIXED = "raw", "pseudonymised", "mixed"


class PrivacyModeError(ConfigError):
    """The run's ``privacy.pseudonymise_users`` does not fit the ids the lakehouse stores."""


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
