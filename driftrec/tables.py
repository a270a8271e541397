"""The lakehouse contract: every table's schema, partitioning and key, in one place.

Jobs never spell a table's columns anywhere else; they call :func:`conform` to select exactly these columns in
this order before writing, so a schema drift is caught at the write, not in a downstream query.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T


@dataclass(frozen=True)
class TableSpec:
    logical: str  # attribute of :class:`driftrec.config.TablesConfig` holding the physical name
    schema: T.StructType
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()  # MERGE key; empty for replace-by-partition tables
    comment: str = ""


def _f(name: str, dtype: T.DataType, nullable: bool = True, comment: str = "") -> T.StructField:
    return T.StructField(name, dtype, nullable, metadata={"comment": comment} if comment else {})


EVENTS = TableSpec(
    logical="events",
    schema=T.StructType(
        [
            _f("event_id", T.StringType(), False, "sha256 of user, item, type and timestamp: the dedup key"),
            _f("user_id", T.LongType(), False),
            _f("item_id", T.LongType(), False),
            _f("event_type", T.StringType(), False),
            _f("event_ts", T.TimestampType(), False, "UTC"),
            _f("weight", T.DoubleType(), False),
            _f("source", T.StringType(), False, "file the event was ingested from"),
            _f("ingested_at", T.TimestampType(), False),
            _f("event_date", T.DateType(), False, "UTC date of event_ts; partition column"),
        ]
    ),
    partition_by=("event_date",),
    key=("event_id",),
    comment="Interaction events, one row per distinct (user, item, type, timestamp).",
)

# The events of a scratch lakehouse (``driftrec evaluate``/``tune``: a split written at once, read whole): one table
# unpartitioned, its files ranged by date. A long history by day is thousands of tiny files (ml-latest-small: 4,110
# days; its split written in 44-55 s by day against 1-1.5 s, read and aggregated in 7-9 s against 0.6-1.2 s).
SCRATCH_EVENTS = replace(EVENTS, partition_by=(), comment=EVENTS.comment + " Scratch split, ranged by event_date.")

ITEMS = TableSpec(
    logical="items",
    schema=T.StructType(
        [
            _f("item_id", T.LongType(), False),
            _f("title", T.StringType()),
            _f("categories", T.ArrayType(T.StringType(), True), False),
            _f("text", T.StringType(), comment="free text: description, tags"),
            _f("content_hash", T.StringType(), False, "changes when title, categories or text change"),
            _f("source", T.StringType(), False),
            _f("updated_at", T.TimestampType(), False),
        ]
    ),
    key=("item_id",),
    comment="Item catalogue.",
)

QUARANTINE = TableSpec(
    logical="quarantine",
    schema=T.StructType(
        [
            _f("quarantine_id", T.StringType(), False, "sha256 of source, row content and reason"),
            _f("target", T.StringType(), False, "table the row was meant for"),
            _f("source", T.StringType(), False),
            _f("row_content", T.StringType(), False, "the raw row as JSON"),
            _f("reason", T.StringType(), False),
            _f("ingested_at", T.TimestampType(), False),
        ]
    ),
    key=("quarantine_id",),
    comment="Rows rejected by ingestion, with the reason; nothing is silently dropped.",
)

INGEST_LOG = TableSpec(
    logical="ingest_log",
    schema=T.StructType(
        [
            _f("run_id", T.StringType(), False),
            _f("target", T.StringType(), False),
            _f("source", T.StringType(), False),
            _f("rows_read", T.LongType(), False),
            _f("rows_valid", T.LongType(), False),
            _f("rows_duplicate", T.LongType(), False, "valid rows repeating an event already in the same batch"),
            _f("rows_inserted", T.LongType(), False),
            _f("rows_updated", T.LongType(), False),
            _f("rows_quarantined", T.LongType(), False),
            _f("finished_at", T.TimestampType(), False),
        ]
    ),
    comment="One row per ingested source per run: the counts the job reports.",
)

# --- interest migration engine (driftrec.migration) -------------------------------------------------------------
# Decayed counts are stored lazily: a row holds its count as of its own date, and its value on a later day D is
# count * 2^(-(D - date)/half_life). A night rewrites only the rows its events touch. The item tables use
# migration.item_half_life_days, by default None: their counts are then plain sums.

USER_TRANSITIONS = TableSpec(
    logical="user_transitions",
    schema=T.StructType(
        [
            _f("user_id", T.LongType(), False),
            _f("from_cat", T.StringType(), False),
            _f("to_cat", T.StringType(), False),
            _f("count", T.DoubleType(), False, "decayed transition count as of updated_through"),
            _f("prob", T.DoubleType(), False, "P_u(to|from) shrunk toward the global category matrix"),
            _f("global_weight", T.DoubleType(), False, "s/(n_u(from)+s): weight of the global row in P_u"),
            _f("updated_through", T.DateType(), False, "last night that updated this user's rows"),
        ]
    ),
    key=("user_id", "from_cat", "to_cat"),
    comment="Per-user category transitions; unobserved pairs have prob = global_weight * global prob.",
)

CATEGORY_TRANSITIONS = TableSpec(
    logical="category_transitions",
    schema=T.StructType(
        [
            _f("from_cat", T.StringType(), False),
            _f("to_cat", T.StringType(), False),
            _f("count", T.DoubleType(), False, "decayed count over all users as of updated_through"),
            _f("prob", T.DoubleType(), False, "smoothed P(to|from); every row sums to 1"),
            _f("updated_through", T.DateType(), False),
        ]
    ),
    key=("from_cat", "to_cat"),
    comment="Global category transition matrix, dense K x K.",
)

ITEM_TRANSITION_COUNTS = TableSpec(
    logical="item_transition_counts",
    schema=T.StructType(
        [
            _f("from_item", T.LongType(), False),
            _f("to_item", T.LongType(), False),
            _f("count", T.DoubleType(), False, "decayed count as of as_of"),
            _f("as_of", T.DateType(), False),
        ]
    ),
    key=("from_item", "to_item"),
    comment="State: every observed item pair with its decayed count (item_transitions is its pruned view).",
)

ITEM_TRANSITIONS = TableSpec(
    logical="item_transitions",
    schema=T.StructType(
        [
            _f("from_item", T.LongType(), False),
            _f("to_item", T.LongType(), False),
            _f("count", T.DoubleType(), False, "decayed observed count as of updated_through (0: from smoothing)"),
            _f("prob", T.DoubleType(), False, "smoothed P(to|from) renormalised over the kept top-N"),
            _f("rank", T.IntegerType(), False, "1 = most likely successor; ties broken by to_item"),
            _f("updated_through", T.DateType(), False),
        ]
    ),
    key=("from_item", "to_item"),
    comment="Global item successor table, top-N per item.",
)

ITEM_POPULARITY = TableSpec(
    logical="item_popularity",
    schema=T.StructType(
        [
            _f("item_id", T.LongType(), False),
            _f("count", T.DoubleType(), False, "decayed event count as of as_of"),
            _f("as_of", T.DateType(), False),
        ]
    ),
    key=("item_id",),
    comment="State: decayed event counts per item (smoothing prior and within-category popularity).",
)

USER_INTEREST = TableSpec(
    logical="user_interest",
    schema=T.StructType(
        [
            _f("user_id", T.LongType(), False),
            _f("category", T.StringType(), False),
            _f("p", T.DoubleType(), False, "interest distribution; sums to 1 per user"),
            _f("recent_count", T.DoubleType(), False, "decayed category evidence, migration.recent_half_life_days"),
            _f("long_term_count", T.DoubleType(), False, "same with migration.baseline_half_life_days"),
            _f("as_of", T.DateType(), False, "last night with events for this user"),
        ]
    ),
    key=("user_id", "category"),
    comment="Each user's interest distribution over categories, moved every night the user is active.",
)

USER_LAST_EVENT = TableSpec(
    logical="user_last_event",
    schema=T.StructType(
        [
            _f("user_id", T.LongType(), False),
            _f("item_id", T.LongType(), False),
            _f("event_ts", T.TimestampType(), False),
            _f("event_id", T.StringType(), False),
        ]
    ),
    key=("user_id",),
    comment="State: each user's latest processed event, so transitions across midnight are counted.",
)

DRIFT_PARAMS = TableSpec(
    logical="drift_params",
    schema=T.StructType(
        [
            _f("ds", T.DateType(), False),
            _f("a", T.DoubleType(), False, "weight of the previous interest"),
            _f("b", T.DoubleType(), False, "weight of the migration term p.P_u"),
            _f("method", T.StringType(), False, "fitted | pinned | default (too few events to fit)"),
            _f("log_likelihood", T.DoubleType(), True, "of the night's held-out events at (a, b)"),
            _f("log_likelihood_default", T.DoubleType(), True, "at the configured default (a, b), to compare"),
            _f("n_events", T.LongType(), False, "events of the night"),
            _f("n_fit_events", T.DoubleType(), False, "held-out evidence the fit used (users with a prior)"),
            _f("n_users", T.LongType(), False, "users whose interest moved"),
            _f("finished_at", T.TimestampType(), False),
        ]
    ),
    key=("ds",),
    comment="One row per migration night: the drift parameters used and how they were obtained.",
)

USER_DRIFT = TableSpec(
    logical="user_drift",
    schema=T.StructType(
        [
            _f("ds", T.DateType(), False),
            _f("user_id", T.LongType(), False),
            _f("js_divergence", T.DoubleType(), False, "JS (bits) between recent and long-term category profile"),
            _f("day_shift", T.DoubleType(), False, "JS (bits) between interest before and after the night"),
            _f("rising_category", T.StringType(), False, "largest recent - long-term gain; ties by name"),
            _f("rising_delta", T.DoubleType(), False),
            _f("falling_category", T.StringType(), False, "largest loss; ties by name"),
            _f("falling_delta", T.DoubleType(), False),
            _f("migrating", T.BooleanType(), False, "js_divergence >= migration.drift_threshold"),
            _f("n_events", T.DoubleType(), False, "the user's categorised evidence that night"),
        ]
    ),
    partition_by=("ds",),
    comment="How much each active user's interest moved each night, and toward what.",
)

MIGRATION_RUNS = TableSpec(
    logical="migration_runs",
    schema=T.StructType(
        [
            _f("ds", T.DateType(), False),
            _f("batch_id", T.StringType(), False, "nights committed together (one night, or a backfill chunk)"),
            _f("batch_start", T.DateType(), False),
            _f("batch_end", T.DateType(), False),
            _f("status", T.StringType(), False, "started (logged before the batch's commits) | finished"),
            _f("state_versions", T.MapType(T.StringType(), T.LongType()), False, "table versions before the batch"),
            _f("logged_at", T.TimestampType(), False),
        ]
    ),
    comment="Append-only log of migration batches: the watermark, and the versions a rerun or a recovery "
    "restores. A batch with 'started' rows and no 'finished' ones was interrupted.",
)

MIGRATION_STATE_TABLES: tuple[TableSpec, ...] = (
    USER_TRANSITIONS,
    CATEGORY_TRANSITIONS,
    ITEM_TRANSITION_COUNTS,
    ITEM_TRANSITIONS,
    ITEM_POPULARITY,
    USER_INTEREST,
    USER_LAST_EVENT,
)
MIGRATION_TABLES: tuple[TableSpec, ...] = (*MIGRATION_STATE_TABLES, DRIFT_PARAMS, USER_DRIFT, MIGRATION_RUNS)

ALL_TABLES: tuple[TableSpec, ...] = (EVENTS, ITEMS, QUARANTINE, INGEST_LOG, *MIGRATION_TABLES)


# --- transfer learning: text embeddings, interest topics, training sequences, model registry (issue 4) ---

ITEM_TEXT_EMBEDDINGS = TableSpec(
    logical="item_text_embeddings",
    schema=T.StructType(
        [
            _f("item_id", T.LongType(), False),
            _f("model", T.StringType(), False, "sentence encoder name (embeddings.model)"),
            _f("content_hash", T.StringType(), False, "items.content_hash the vector was computed from"),
            _f("embedding", T.ArrayType(T.FloatType()), False, "mean-pooled, L2-normalised"),
            _f("dim", T.IntegerType(), False),
            _f("updated_at", T.TimestampType(), False),
        ]
    ),
    key=("item_id", "model"),
    comment="Frozen pretrained text vectors of items; re-encoded only when an item's content_hash changes.",
)

ITEM_TOPICS = TableSpec(
    logical="item_topics",
    schema=T.StructType(
        [
            _f("item_id", T.LongType(), False),
            _f("topic", T.StringType(), False, "interest topic, e.g. topic_03"),
            _f("model", T.StringType(), False, "clustering that assigned it, e.g. kmeans16/all-MiniLM-L6-v2"),
        ]
    ),
    key=("item_id", "model"),
    comment="Interest topics from clustering text embeddings, for catalogues without categories.",
)

TRAINING_SEQUENCES = TableSpec(
    logical="training_sequences",
    schema=T.StructType(
        [
            _f("ds", T.DateType(), False, "run date (trained-through); partition column"),
            _f("user_id", T.LongType(), False),
            _f("chunk", T.IntegerType(), False, "0 = most recent piece of the user's history"),
            _f("split", T.StringType(), False, "train, or valid (last item = the held-out most recent event)"),
            _f("item_ids", T.ArrayType(T.LongType()), False, "oldest first"),
            _f("event_ts", T.ArrayType(T.LongType()), False, "epoch seconds, aligned with item_ids"),
            _f("interest_categories", T.ArrayType(T.StringType()), False, "user_interest, may be empty"),
            _f("interest_p", T.ArrayType(T.FloatType()), False),
        ]
    ),
    partition_by=("ds",),
    comment="Per-user item sequences a training run reads (pinned Delta version) through Ray Data.",
)

MODEL_REGISTRY = TableSpec(
    logical="model_registry",
    schema=T.StructType(
        [
            _f("version", T.LongType(), False),
            _f("model_name", T.StringType(), False),
            _f("trained_through", T.DateType(), False),
            _f("parent_version", T.LongType(), comment="warm-start source; null for a cold start"),
            _f("config_json", T.StringType(), False, "training section"),
            _f("metrics_json", T.StringType(), False),
            _f("ndcg_at_10", T.DoubleType(), False, "validation, full-catalogue ranking"),
            _f("checkpoint", T.StringType(), False, "published checkpoint directory"),
            _f("is_current", T.BooleanType(), False),
            _f("decision", T.StringType(), False, "why it was or was not promoted"),
            _f("created_at", T.TimestampType(), False),
        ]
    ),
    key=("version",),
    comment="Every trained recommender; exactly one is_current (the one serving and warm-starting).",
)

ALL_TABLES += (ITEM_TEXT_EMBEDDINGS, ITEM_TOPICS, TRAINING_SEQUENCES, MODEL_REGISTRY)


def conform(df: DataFrame, spec: TableSpec, keep: tuple[str, ...] = ()) -> DataFrame:
    """Select exactly the table's columns, cast to its types, in its order; fail naming any missing column.

    ``keep``: columns of ``df`` kept after them as they are (e.g. a MERGE source's flags its clauses read)."""
    missing = [f.name for f in spec.schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"cannot write {spec.logical}: missing column(s) {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in spec.schema.fields] + list(keep))


# --- nightly top-k (issue 5) ---

RECOMMENDATIONS = TableSpec(
    logical="recommendations",
    schema=T.StructType(
        [
            _f("ds", T.DateType(), False, "the night the list was computed for; partition column"),
            _f("user_id", T.LongType(), False),
            _f("rank", T.IntegerType(), False, "1 = best"),
            _f("item_id", T.LongType(), False),
            _f("score", T.DoubleType(), False, "(1 - blend) * model probability + blend * migration p(u,i,t+1)"),
            _f("model_version", T.LongType(), False, "model_registry version that scored the night"),
            _f("reason", T.StringType(), False, "short human-readable explanation from the migration engine"),
        ]
    ),
    partition_by=("ds",),
    key=("ds", "user_id", "rank"),
    comment="Each night's top-k per user; a rerun of a night replaces exactly that night (replaceWhere ds).",
)

ALL_TABLES += (RECOMMENDATIONS,)


# --- offline evaluation (issue 6) ---

EVALUATION_RUNS = TableSpec(
    logical="evaluation_runs",
    schema=T.StructType(
        [
            _f("run_id", T.StringType(), False, "one evaluation run: every system on the same split"),
            _f("dataset", T.StringType(), False),
            _f("protocol", T.StringType(), False, "temporal | leave_one_out (| validation splits when tuning)"),
            _f("system", T.StringType(), False, "e.g. popular_all_time, migration, als, sasrec_random, pipeline"),
            _f("segment", T.StringType(), False, "all | migrating | stable"),
            _f("k", T.IntegerType(), False),
            _f("metric", T.StringType(), False, "hr, recall, ndcg, mrr, coverage"),
            _f("value", T.DoubleType(), False),
            _f("users", T.LongType(), False, "users the value averages over (catalogue size for coverage)"),
            _f("config_json", T.StringType(), False, "the run's configuration"),
            _f("created_at", T.TimestampType(), False),
            # Columns added by a later release go last and nullable: older tables gain them (lakehouse._add_new_columns).
            _f("seed", T.IntegerType(), True, "training/ALS seed; deterministic systems repeat their value per seed"),
        ]
    ),
    key=("run_id", "protocol", "system", "segment", "seed", "k", "metric"),
    comment="Offline metrics, full-catalogue ranking; one row per run, system, segment, seed, cut-off and metric.",
)

ALL_TABLES += (EVALUATION_RUNS,)

TUNED_SETTINGS = TableSpec(
    logical="tuned_settings",
    schema=T.StructType(
        [
            _f("tuned_at", T.TimestampType(), False, "when the search ran; top-k serves the latest row"),
            _f("run_id", T.StringType(), False, "the tune (or evaluate) run that chose them"),
            _f("data_through", T.DateType(), False, "the last event date the tuning split saw"),
            _f("settings_json", T.StringType(), False,
               "chosen values by section, e.g. {\"topk\": {\"blend_weight\": 0.4}, \"migration\": {...}}"),
            _f("validation_ndcg", T.DoubleType(), False, "the pipeline's validation NDCG@k with the chosen values"),
            _f("default_ndcg", T.DoubleType(), False, "the same with the configured (untuned) values"),
            _f("users", T.LongType(), False, "validation users scored"),
            _f("search_json", T.StringType(), False, "every combination tried and its validation NDCG@k"),
        ]
    ),
    key=("run_id",),
    comment="Settings chosen on the validation split by `driftrec tune`; the nightly top-k serves the latest.",
)

ALL_TABLES += (TUNED_SETTINGS,)


# --- operations (issue 7) ---

PIPELINE_RUNS = TableSpec(
    logical="pipeline_runs",
    schema=T.StructType(
        [
            _f("run_id", T.StringType(), False, "one invocation of `driftrec nightly`"),
            _f("ds", T.DateType(), False, "the night the stage ran for"),
            _f("stage", T.StringType(), False, "migrate | embed_items | train | topk"),
            _f("status", T.StringType(), False, "running | succeeded | failed"),
            _f("rows_in", T.LongType(), comment="rows the stage read (events of the night, items, sequences, users)"),
            _f("rows_out", T.LongType(), comment="rows the stage wrote"),
            _f("seconds", T.DoubleType()),
            _f("model_version", T.LongType(), comment="model_registry version current after the stage"),
            _f("detail", T.StringType(), comment="summary, or the error of a failed stage"),
            _f("started_at", T.TimestampType(), False),
            _f("finished_at", T.TimestampType()),
        ]
    ),
    key=("run_id", "ds", "stage"),
    comment="One row per nightly stage attempt; the latest row per (ds, stage) says where a rerun resumes.",
)

ALL_TABLES += (PIPELINE_RUNS,)


# ---- the run lock (driftrec.runlock) ---------------------------------------------------------------------------
# Not in ALL_TABLES: it lives at <root>/_pipeline/run_lock, is never registered in the catalog, and holds no data,
# only who runs on this lakehouse right now (acquiring it is one Delta commit).
RUN_LOCK = TableSpec(
    logical="run_lock",
    schema=T.StructType(
        [
            _f("lock_name", T.StringType(), False, "one row per lock; `pipeline` guards nightly and forget-user"),
            _f("token", T.StringType(), False, "random id of this acquisition: the holder is whoever's token it is"),
            _f("run_id", T.StringType(), False),
            _f("host", T.StringType(), False),
            _f("pid", T.LongType(), False),
            _f("pid_started", T.LongType(), comment="the pid's start time (clock ticks since boot): pid reuse guard"),
            _f("acquired_at", T.TimestampType(), False, "UTC"),
        ]
    ),
    key=("lock_name",),
    comment="The lakehouse run lock: at most one row per lock_name, its holder.",
)
