"""The local ``driftrec`` command: the same jobs as the spark-submit entry points, on a local Spark.

This is the only place that asks for a local master (``spark.master`` in config, default ``local[*]``); the job
modules never do, so the same code runs under ``spark-submit`` on a cluster. It lives with the entry points: the
library (``driftrec/``) never imports a job (``tests/test_layering.py``). Each subcommand calls its job's own
``run_from_args``, so a stage behaves and records itself the same whichever way it is launched. Training and top-k
are imported when their subcommand runs: they load torch, which every other command can do without.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time

from pyspark.sql import functions as F

from driftrec import lakehouse, sqltext
from driftrec.lakehouse import Lakehouse
from driftrec.config import ConfigError
from driftrec.jobargs import add_config_flags, add_run_id, config_from_args, parse_date
from driftrec.spark import build_spark
from driftrec.synthetic import write_dataset
from driftrec.tables import EVENTS
from jobs import embed_items, evaluate, forget_user, ingest, migrate, nightly


def _spark(conf, app: str):
    return build_spark(conf, app_name=app, local=True)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def cmd_ingest(args) -> int:
    conf = config_from_args(args)
    ingest.run_from_args(_spark(conf, "driftrec-ingest"), conf, args)
    return 0


def cmd_migrate(args) -> int:
    if (problem := migrate.check_modes(args)) is not None:
        raise SystemExit(f"driftrec migrate: {problem}")
    conf = config_from_args(args)
    for report in migrate.run_from_args(_spark(conf, "driftrec-migrate"), conf, args):
        print(report.summary())
    return 0


def cmd_embed_items(args) -> int:
    conf = config_from_args(args)
    print(embed_items.run_from_args(_spark(conf, "driftrec-embed-items"), conf, args).detail)
    return 0


def cmd_train(args) -> int:
    from jobs import train  # torch

    conf = config_from_args(args)
    print(train.run_from_args(_spark(conf, "driftrec-train"), conf, args).detail)
    return 0


def cmd_topk(args) -> int:
    from jobs import topk  # torch

    conf = config_from_args(args)
    print(topk.run_from_args(_spark(conf, "driftrec-topk"), conf, args).detail)
    return 0


def cmd_nightly(args) -> int:
    nightly.dates_from_args(args)
    conf = config_from_args(args)
    return nightly.run_from_args(_spark(conf, "driftrec-nightly"), conf, args)


def _progress_logging() -> None:
    """driftrec's own INFO lines on stderr (each step and its time) for the long commands; Spark's stay at WARN."""
    logger = logging.getLogger("driftrec")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def cmd_evaluate(args) -> int:
    _progress_logging()
    conf = evaluate.config_from_arguments(args.parser, args)
    return evaluate.run_from_args(_spark(conf, "driftrec-evaluate"), conf, args)


def cmd_tune(args) -> int:
    from jobs import tune  # lazily: torch

    _progress_logging()
    conf = config_from_args(args)
    return tune.run_from_args(_spark(conf, "driftrec-tune"), conf, args)


def _last_event_date(spark, conf):
    return lakehouse.read_table(spark, conf, EVENTS).agg(F.max("event_date")).first()[0]


def _demo_migration(spark, conf, last, nights: int) -> None:
    """The migration state up to the night before ``last``, as months of nightly runs would have left it: the history
    through ``last - nights`` in one pass (a first load), then the nights after it one by one (``last`` itself is the
    nightly job's). A lakehouse that already holds processed nights (a rerun) only catches up from its watermark."""
    job = migrate.MigrationJob(spark, conf)
    done = job.processed_dates()
    if not done:
        cutoff = last - dt.timedelta(days=nights)
        print(job.rebuild(cutoff).summary())
        done = [cutoff]
    if done[-1] < last - dt.timedelta(days=1):
        print(job.run(last - dt.timedelta(days=1))[-1].summary())


def cmd_generate(args) -> int:
    conf = config_from_args(args)
    out = write_dataset(conf.synthetic, args.out)
    print(out)
    return 0


def cmd_sql(args) -> int:
    conf = config_from_args(args)
    spark = _spark(conf, "driftrec-sql")
    lakehouse.register_all(spark, conf)
    spark.sql(args.query).show(args.limit, truncate=False)
    return 0


def cmd_forget_user(args) -> int:
    try:
        forget_user.user_ids_from_args(args)  # refuse before starting Spark
    except ValueError as e:
        raise SystemExit(f"driftrec {e}") from None
    conf = config_from_args(args)
    forget_user.run_from_args(_spark(conf, "driftrec-forget-user"), conf, args)
    return 0


def cmd_demo(args) -> int:
    """Run the nightly pipeline end to end on demo data: bundled generator, or a MovieLens directory."""
    conf = config_from_args(args)
    started = time.time()
    spark = _spark(conf, "driftrec-demo")
    job = ingest.IngestJob(spark, conf)
    _banner("ingest")
    if args.movielens:
        sources = job.plan(movielens=args.movielens)
    else:
        lake = Lakehouse.of(conf)
        demo_dir = lake.local_path(lake.demo_source_dir(), operation="the demo's generated source files")
        write_dataset(conf.synthetic, demo_dir)
        print(f"generated demo data in {demo_dir}")
        sources = job.plan(events=[str(demo_dir / "events")], items=[str(demo_dir / "items.parquet")], fmt="parquet")
    print(job.run(sources).summary())

    last = _last_event_date(spark, conf)
    _banner(f"interest migration: the history up to {last}")
    _demo_migration(spark, conf, last, max(1, args.nights))
    _banner(f"nightly pipeline for {last}: {', '.join(conf.pipeline.stages)}")
    if nightly.NightlyJob(spark, conf).run(last, force=True).failed:
        return 1

    _banner("done")
    root = Lakehouse.of(conf).root
    print(f"lakehouse: {root}  ({time.time() - started:.0f}s)")
    for logical in ("events", "items", "quarantine", "user_interest", "user_drift", "item_transitions",
                    "item_text_embeddings", "model_registry", "recommendations", "pipeline_runs"):
        print(f"  {conf.table_name(logical):<28} {conf.table_path(logical)}")
    db = conf.lakehouse.database
    query = (
        f"SELECT rising_category, count(*) AS users, round(avg(js_divergence), 3) AS mean_js FROM {db}.user_drift "
        f"WHERE migrating AND ds = (SELECT max(ds) FROM {db}.user_drift) GROUP BY rising_category ORDER BY users DESC"
    )
    print("\nsample query (where are migrating users moving?):")
    print(f'  driftrec sql --lakehouse {root} "{query}"')
    spark.sql(query).show(10, truncate=False)
    sample = (
        f"SELECT r.user_id, r.rank, i.title, round(r.score, 4) AS score, r.reason FROM {db}.recommendations r "
        f"JOIN {db}.items i USING (item_id) WHERE r.ds = {sqltext.literal(last)} AND r.rank <= 3 "
        "ORDER BY r.user_id, r.rank"
    )
    print("sample of tonight's recommendations, with reasons:")
    print(f'  driftrec sql --lakehouse {root} "{sample}"')
    spark.sql(sample).show(12, truncate=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the nightly pipeline on demo data (generated, or --movielens DIR)")
    add_config_flags(p)
    p.add_argument("--movielens", metavar="DIR", help="use a MovieLens release instead of generated data")
    p.add_argument(
        "--nights", type=int, default=2,
        help="the last N days run night by night through the migration engine (the history before is built in one pass)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("nightly", help="every nightly stage for --date (or --from/--to), resuming a failed run")
    add_config_flags(p)
    nightly.add_arguments(p)
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("migrate", help="interest migration engine for one night (--date) or a range (--from/--to)")
    add_config_flags(p)
    migrate.add_arguments(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("embed-items", help="encode new or changed items' text with the pretrained sentence encoder")
    add_config_flags(p)
    embed_items.add_arguments(p)
    p.set_defaults(func=cmd_embed_items)

    p = sub.add_parser("train", help="train the sequential recommender (Ray Train) and gate it in the registry")
    add_config_flags(p)
    p.add_argument("--date", type=parse_date, required=True, help="trained-through date (YYYY-MM-DD)")
    add_run_id(p)  # the same flags as jobs/train.py, declared here so that parsing does not load torch
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("topk", help="nightly top-k: score active users, blend with migration, write recommendations")
    add_config_flags(p)
    p.add_argument("--date", type=parse_date, required=True, help="the night to score (YYYY-MM-DD)")
    add_run_id(p)  # as jobs/topk.py
    p.set_defaults(func=cmd_topk)

    p = sub.add_parser("evaluate", help="offline evaluation of every system under both protocols, with a report")
    add_config_flags(p)
    evaluate.add_arguments(p)
    p.set_defaults(func=cmd_evaluate, parser=p)

    p = sub.add_parser("tune", help="choose the blend and the engine's scoring knobs on the validation split; "
                       "the nightly top-k serves the latest choice")
    add_config_flags(p)
    p.add_argument("--run-id", help="id of this search in tuned_settings (default: tune-<timestamp>)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("ingest", help="ingest events and an item catalogue")
    add_config_flags(p)
    ingest.add_arguments(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("generate", help="write a synthetic data set with known ground truth")
    add_config_flags(p)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sql", help="run a SQL query against the lakehouse tables")
    add_config_flags(p)
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("forget-user", help="GDPR erasure: delete users' rows from every user table, then VACUUM")
    add_config_flags(p)
    forget_user.add_arguments(p)
    p.set_defaults(func=cmd_forget_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"driftrec: {e}", file=sys.stderr)
        return 2
    except nightly.PipelineLocked as e:
        print(f"driftrec {args.command}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
