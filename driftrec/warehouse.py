"""The queries warehouse users run every morning, in SQL that Spark and DataFusion (delta-rs) both accept.

Table names are placeholders: ``{recommendations}`` becomes ``driftrec.recommendations`` in Spark or whatever
name a non-Spark reader registered the Delta path under. The README shows them; the tests run each through both.
"""

from __future__ import annotations

import datetime as dt

QUERIES: dict[str, str] = {
    # One user's list tonight, best first, with titles and reasons.
    "user_list": """
SELECT r.rank, r.item_id, i.title, r.score, r.reason
FROM {recommendations} r JOIN {items} i ON r.item_id = i.item_id
WHERE r.ds = DATE '{ds}' AND r.user_id = {user_id}
ORDER BY r.rank
""",
    # How each user's list changed since yesterday: items that entered, left, or stayed (with both ranks).
    "list_changes": """
SELECT COALESCE(t.user_id, y.user_id) AS user_id, COALESCE(t.item_id, y.item_id) AS item_id,
       y.rank AS rank_yesterday, t.rank AS rank_today,
       CASE WHEN y.item_id IS NULL THEN 'entered' WHEN t.item_id IS NULL THEN 'left' ELSE 'stayed' END AS change
FROM (SELECT user_id, item_id, rank FROM {recommendations} WHERE ds = DATE '{ds}') t
FULL OUTER JOIN (SELECT user_id, item_id, rank FROM {recommendations} WHERE ds = DATE '{yesterday}') y
  ON t.user_id = y.user_id AND t.item_id = y.item_id
ORDER BY user_id, change, item_id
""",
    # Where migrating users are heading tonight, and how strongly.
    "migration_targets": """
SELECT rising_category, COUNT(*) AS users, AVG(js_divergence) AS mean_js
FROM {user_drift}
WHERE ds = DATE '{ds}' AND migrating
GROUP BY rising_category
ORDER BY users DESC, rising_category
""",
}


def _param(name: str, value) -> str:
    """A parameter's text: an integer, or a date (a ``datetime.date`` or ``YYYY-MM-DD``); anything else is refused,
    so no value can carry SQL into the query."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ValueError(f"query parameter {name}={value!r}: expected an integer or a date (YYYY-MM-DD)")


def render(name: str, tables: dict[str, str], **params) -> str:
    """The query ``name`` with table placeholders replaced by ``tables`` and parameters (integers, dates) filled in."""
    return QUERIES[name].format(**tables, **{k: _param(k, v) for k, v in params.items()}).strip()


TABLES = ("recommendations", "items", "user_drift")


def spark_tables(conf) -> dict[str, str]:
    """Catalog names of the tables the queries read (``database.table``, as configured)."""
    return {t: conf.table_name(t) for t in TABLES}
