"""One typed configuration shared by every job.

Loaded from a TOML file (optional) and overridden by ``--set section.key=value`` flags. Unknown keys and wrong
types are errors that name the offending key, so a typo in a nightly config fails loudly instead of being ignored.
"""

from __future__ import annotations

import tomllib
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


class SparkConfig(_Section):
    # Used only by the local `driftrec` command: under spark-submit the cluster's settings win.
    master: str = "local[*]"
    driver_memory: str = "6g"
    shuffle_partitions: int = Field(default=8, ge=1)
    ui: bool = False
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
    mapping: ColumnMapping = Field(default_factory=ColumnMapping)
    csv_delimiter: str = ","


class SyntheticConfig(_Section):
    users: int = Field(default=2000, ge=1)
    items: int = Field(default=1000, ge=1)
    categories: int = Field(default=8, ge=2)
    days: int = Field(default=30, ge=1)
    events_per_user_day: float = Field(default=0.5, gt=0)
    migrating_fraction: float = Field(default=0.2, ge=0, le=1)
    start_date: str = "2026-01-01"
    seed: int = 7


class Config(_Section):
    lakehouse: LakehouseConfig = Field(default_factory=LakehouseConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    def table_path(self, logical: str) -> str:
        """Filesystem location of a table, by its logical name (e.g. ``"events"``)."""
        return str(Path(self.lakehouse.root).resolve() / getattr(self.tables, logical))

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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build the configuration from an optional TOML file plus ``key.sub=value`` overrides."""
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
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None
