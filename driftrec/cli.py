"""The local ``driftrec`` command: the same jobs as the spark-submit entry points, on a local Spark.

This is the only place that asks for a local master (``spark.master`` in config, default ``local[*]``); the job
modules never do, so the same code runs under ``spark-submit`` on a cluster.
"""

from __future__ import annotations

import argparse
import sys
import time

from driftrec.config import ConfigError
from driftrec.jobargs import add_config_flags, config_from_args, parse_date


def _spark(conf, app: str):
    from driftrec.spark import build_spark

    return build_spark(conf, app_name=app, local=True)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def cmd_ingest(args) -> int:
    from jobs.ingest import run_from_args

    conf = config_from_args(args)
    run_from_args(_spark(conf, "driftrec-ingest"), conf, args)
    return 0


def cmd_migrate(args) -> int:
    from jobs.migrate import run_from_args

    conf = config_from_args(args)
    modes = [args.date is not None, args.start is not None or args.end is not None, args.rebuild is not None]
    if sum(modes) != 1 or (modes[1] and (args.start is None or args.end is None)):
        raise SystemExit("driftrec migrate: give one of --date, both --from and --to, or --rebuild-through")
    for report in run_from_args(_spark(conf, "driftrec-migrate"), conf, args):
        print(report.summary())
    return 0


def cmd_embed_items(args) -> int:
    from jobs.embed_items import EmbedItemsJob

    conf = config_from_args(args)
    print(EmbedItemsJob(_spark(conf, "driftrec-embed-items"), conf).run().summary())
    return 0


def cmd_train(args) -> int:
    from jobs.train import TrainJob

    conf = config_from_args(args)
    print(TrainJob(_spark(conf, "driftrec-train"), conf).run(args.date).summary())
    return 0


def cmd_topk(args) -> int:
    from jobs.topk import TopKJob

    conf = config_from_args(args)
    print(TopKJob(_spark(conf, "driftrec-topk"), conf).run(args.date).summary())
    return 0


def cmd_nightly(args) -> int:
    from jobs.nightly import dates_from_args, run_from_args

    dates_from_args(args)
    conf = config_from_args(args)
    return run_from_args(_spark(conf, "driftrec-nightly"), conf, args)


def cmd_evaluate(args) -> int:
    from jobs.evaluate import EvaluationJob

    conf = config_from_args(args)
    report = EvaluationJob(_spark(conf, "driftrec-evaluate"), conf, args.dataset, args.run_id).run()
    print(report.table().round(4).to_string())
    print(f"run {report.run_id}: {report.seconds} s; report {report.report_path}")
    return 0


def _last_event_date(spark, conf):
    from pyspark.sql import functions as F

    from driftrec import lakehouse
    from driftrec.tables import EVENTS

    return lakehouse.read_table(spark, conf, EVENTS).agg(F.max("event_date")).first()[0]


def _demo_migration(spark, conf, last, nights: int) -> None:
    """The migration state up to the night before ``last``, as months of nightly runs would have left it: the history
    through ``last - nights`` in one pass (a first load), then the nights after it one by one (``last`` itself is the
    nightly job's). A lakehouse that already holds processed nights (a rerun) only catches up from its watermark."""
    import datetime as dt

    from jobs.migrate import MigrationJob

    job = MigrationJob(spark, conf)
    done = job.processed_dates()
    if not done:
        cutoff = last - dt.timedelta(days=nights)
        print(job.rebuild(cutoff).summary())
        done = [cutoff]
    if done[-1] < last - dt.timedelta(days=1):
        print(job.run(last - dt.timedelta(days=1))[-1].summary())


def cmd_generate(args) -> int:
    from driftrec.synthetic import write_dataset

    conf = config_from_args(args)
    out = write_dataset(conf.synthetic, args.out)
    print(out)
    return 0


def cmd_sql(args) -> int:
    conf = config_from_args(args)
    spark = _spark(conf, "driftrec-sql")
    from driftrec import lakehouse

    lakehouse.register_all(spark, conf)
    spark.sql(args.query).show(args.limit, truncate=False)
    return 0


def cmd_forget_user(args) -> int:
    from jobs.forget_user import run_from_args, user_ids_from_args

    try:
        user_ids_from_args(args)  # refuse before starting Spark
    except ValueError as e:
        raise SystemExit(f"driftrec {e}") from None
    conf = config_from_args(args)
    run_from_args(_spark(conf, "driftrec-forget-user"), conf, args)
    return 0


def cmd_demo(args) -> int:
    """Run the nightly pipeline end to end on demo data: bundled generator, or a MovieLens directory."""
    from driftrec.lakehouse import Lakehouse
    from jobs.ingest import IngestJob

    conf = config_from_args(args)
    started = time.time()
    spark = _spark(conf, "driftrec-demo")
    job = IngestJob(spark, conf)
    _banner("ingest")
    if args.movielens:
        sources = job.plan(movielens=args.movielens)
    else:
        from driftrec.synthetic import write_dataset

        lake = Lakehouse.of(conf)
        demo_dir = lake.local_path(lake.demo_source_dir(), operation="the demo's generated source files")
        write_dataset(conf.synthetic, demo_dir)
        print(f"generated demo data in {demo_dir}")
        sources = job.plan(events=[str(demo_dir / "events")], items=[str(demo_dir / "items.parquet")], fmt="parquet")
    print(job.run(sources).summary())

    from jobs.nightly import NightlyJob

    last = _last_event_date(spark, conf)
    _banner(f"interest migration: the history up to {last}")
    _demo_migration(spark, conf, last, max(1, args.nights))
    _banner(f"nightly pipeline for {last}: {', '.join(conf.pipeline.stages)}")
    if NightlyJob(spark, conf).run(last, force=True).failed:
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
        f"JOIN {db}.items i USING (item_id) WHERE r.ds = DATE'{last}' AND r.rank <= 3 ORDER BY r.user_id, r.rank"
    )
    print("sample of tonight's recommendations, with reasons:")
    print(f'  driftrec sql --lakehouse {root} "{sample}"')
    spark.sql(sample).show(12, truncate=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jobs.ingest import add_arguments as ingest_args

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
    from jobs.nightly import add_arguments as nightly_args

    nightly_args(p)
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("migrate", help="interest migration engine for one night (--date) or a range (--from/--to)")
    add_config_flags(p)
    from jobs.migrate import add_arguments as migrate_args

    migrate_args(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("embed-items", help="encode new or changed items' text with the pretrained sentence encoder")
    add_config_flags(p)
    p.set_defaults(func=cmd_embed_items)

    p = sub.add_parser("train", help="train the sequential recommender (Ray Train) and gate it in the registry")
    add_config_flags(p)
    p.add_argument("--date", type=parse_date, required=True, help="trained-through date (YYYY-MM-DD)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("topk", help="nightly top-k: score active users, blend with migration, write recommendations")
    add_config_flags(p)
    p.add_argument("--date", type=parse_date, required=True, help="the night to score (YYYY-MM-DD)")
    p.set_defaults(func=cmd_topk)

    p = sub.add_parser("evaluate", help="offline evaluation of every system under both protocols, with a report")
    add_config_flags(p)
    from jobs.evaluate import add_arguments as evaluate_args

    evaluate_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ingest", help="ingest events and an item catalogue")
    add_config_flags(p)
    ingest_args(p)
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
    from jobs.forget_user import add_arguments as forget_user_args

    forget_user_args(p)
    p.set_defaults(func=cmd_forget_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jobs.nightly import PipelineLocked

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"driftrec: {e}", file=sys.stderr)
        return 2
    except PipelineLocked as e:
        print(f"driftrec {args.command}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
