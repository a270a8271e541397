"""Flags every job shares: a config file, ``--set`` overrides and the lakehouse root shortcut."""

from __future__ import annotations

import argparse
from datetime import date

from driftrec.config import Config, load_config


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add_config_flags(parser)
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set migration.half_life_days=14 (repeatable)",
    )
    parser.add_argument("--lakehouse", help="lakehouse root (shortcut for --set lakehouse.root=...)")


def add_run_id(parser: argparse.ArgumentParser) -> None:
    """For the nightly stages' own entry points: the ``pipeline_runs`` run id their row is recorded under."""
    parser.add_argument(
        "--run-id",
        help="record this stage in pipeline_runs under this run id (default: a new one); a scheduler passes its "
        "run's id so the stages of one night share it",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of ``--config``, ``--set`` and ``--lakehouse``; the root is set as given, not parsed as TOML."""
    root = getattr(args, "lakehouse", None)
    return load_config(args.config, list(args.overrides), {"lakehouse.root": root} if root else None)


def parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None
