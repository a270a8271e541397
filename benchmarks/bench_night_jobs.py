"""Spark jobs per block of one migrate-only nightly run on generated data (:mod:`driftrec.jobstats`).

On small data a night's time goes to driver-issued actions (one analysis pass each, plus one Spark job per query
stage), not to executors, so this counts jobs per block: the lock and ``pipeline_runs`` bookkeeping, the migration
watermark and late-event check, the batch setup, the night's computation (its fit and item tables apart), and each
table write. Blocks nest and a job counts for the innermost one; seconds include nested blocks. Also counts the Delta
commits per table. A fresh lakehouse each run; ``--warm`` first processes the day before (not counted) so the
measured night MERGEs into stored state, and the measured run still ensures its tables as a new process would.

    python benchmarks/bench_night_jobs.py                  # ~2k users: figures in benchmarks/results/
    python benchmarks/bench_night_jobs.py --warm --users 5000
    python benchmarks/bench_night_jobs.py --warm --write-threads 1,4,1,4   # concurrent commits vs one at a time
    python benchmarks/bench_night_jobs.py --warm --write-threads 4,4 --sql-conf ";spark.sql.adaptive.enabled=false"
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path

from benchmarks.bench_migration import load_lakehouse
from driftrec import jobstats, lakehouse, stage_runs
from driftrec.config import SyntheticConfig, load_config
from driftrec.migration import night
from driftrec.runlock import RunLock
from driftrec.spark import build_spark
from driftrec.synthetic import write_dataset
from driftrec.tables import ALL_TABLES
from jobs.migrate import MigrationJob
from jobs.nightly import SUCCEEDED, NightlyJob

RESULTS = Path(__file__).resolve().parent / "results" / "bench_night_jobs.json"


def _grouped(owner, attr: str, name) -> None:
    """Run ``owner.attr`` inside a job group: ``name`` or ``name(spec)`` for the lakehouse writes."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        first = args[0]  # a method's self (or a StagedState), a DataFrame, or the session itself
        spark = getattr(first, "sparkSession", None) or getattr(first, "spark", first)
        label = name(args[2]) if callable(name) else name
        with jobstats.job_group(spark, label):
            return original(*args, **kwargs)

    setattr(owner, attr, wrapper)


def instrument() -> None:
    """Finer blocks than the jobs' own, for this process only."""
    _grouped(RunLock, "__enter__", "lock")
    _grouped(RunLock, "__exit__", "lock")
    _grouped(stage_runs, "record", "pipeline_runs")
    _grouped(stage_runs, "latest_status", "pipeline_runs")
    _grouped(night, "night_preamble", "night:preamble")
    _grouped(night, "night_totals", "night:totals")
    _grouped(night, "drift_params", "night:fit")
    _grouped(night, "stage_night", "night:stage")
    for fn in ("merge_upsert", "replace_groups", "replace_where", "append"):
        _grouped(lakehouse, fn, lambda spec: f"write:{spec.logical}")


def bench_config(root: Path, i: int, n_threads: int, args):
    """Lakehouse ``i``'s config: the root set as given (never pasted into TOML), so any character survives."""
    return load_config(overrides=[
        f'lakehouse.database="bench_night_jobs{i}"',
        'pipeline.stages=["migrate"]', f"spark.write_threads={n_threads}",
        f"spark.shuffle_partitions={args.shuffle_partitions}", f'spark.driver_memory="{args.driver_memory}"',
        'spark.conf={"spark.ui.retainedJobs" = "100000"}',  # the status store keeps every job counted
    ], values={"lakehouse.root": str(root)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_night_jobs"), help="work directory")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--categories", type=int, default=8)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--events-per-user-day", type=float, default=2.0)
    ap.add_argument("--shuffle-partitions", type=int, default=2)
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--warm", action="store_true", help="process the day before first (not counted)")
    ap.add_argument("--write-threads", default="4",
                    help="spark.write_threads; a list (e.g. 1,4,1,4) measures each on its own fresh lakehouse, "
                         "side by side in this one process")
    ap.add_argument("--sql-conf", default="",
                    help="runtime Spark SQL settings per measured run, ';'-separated lists of k=v joined by ',' "
                         "(one list per --write-threads entry; empty = the defaults)")
    ap.add_argument("--json", type=Path, default=RESULTS, help="where the figures go")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    data = out / "data"
    cfg = SyntheticConfig(users=args.users, items=args.items, categories=args.categories, days=args.days,
                          events_per_user_day=args.events_per_user_day, seed=5)
    threads = [int(t) for t in str(args.write_threads).split(",")]
    sql = [dict(kv.split("=", 1) for kv in part.split(",") if kv) for part in args.sql_conf.split(";")]
    sql += [{}] * (len(threads) - len(sql))
    for i in range(len(threads)):
        if (out / f"lakehouse{i}").exists():
            shutil.rmtree(out / f"lakehouse{i}")  # before the session starts: fresh lakehouses and metastore
    if data.exists():
        shutil.rmtree(data)
    info = write_dataset(cfg, data)

    def config(i: int, n_threads: int):
        return bench_config(out / f"lakehouse{i}", i, n_threads, args)

    spark = build_spark(config(0, threads[0]), app_name="bench-night-jobs", local=True)
    spark.sparkContext.setLogLevel("ERROR")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    instrument()
    runs = []
    for i, n in enumerate(threads):
        saved = {k: spark.conf.get(k, None) for k in sql[i]}
        for k, v in sql[i].items():
            spark.conf.set(k, v)
        runs.append({**measure(spark, config(i, n), data, cfg, args), "sql_conf": sql[i]})
        for k, v in saved.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
    figures = {**runs[-1], "synthetic": {
        "users": args.users, "items": args.items, "categories": args.categories, "days": args.days,
        "events_per_user_day": args.events_per_user_day, "events_generated": info["n_events"]}}
    if len(runs) > 1:
        figures["side_by_side"] = [{"write_threads": r["write_threads"], "sql_conf": r["sql_conf"],
                                    "wall_s": r["wall_s"], "commit_s": r["commit_s"], "jobs_total": r["jobs_total"]}
                                   for r in runs]
        print("\n| write_threads | sql conf | wall s | migrate:commit s | jobs |\n|---:|---|---:|---:|---:|")
        for r in figures["side_by_side"]:
            print(f"| {r['write_threads']} | {r['sql_conf'] or '-'} | {r['wall_s']} | {r['commit_s']} "
                  f"| {r['jobs_total']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures -> {args.json}")
    spark.stop()
    return 0 if all(r["ok"] for r in runs) else 1


def measure(spark, conf, data: Path, cfg: SyntheticConfig, args) -> dict:
    """One measured nightly on a fresh lakehouse loaded with ``data`` (warmed by the night before if asked)."""
    n_events = load_lakehouse(spark, conf, data)
    last = dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=args.days - 1)
    if args.warm:
        rep = NightlyJob(spark, conf).run(last - dt.timedelta(days=1))
        assert rep.failed is None, rep.summary()
    lakehouse.forget_ensured(conf)  # the measured run ensures its tables like a new process

    before = lakehouse.table_versions(spark, conf, ALL_TABLES, missing_ok=True)
    jobstats.start()
    t0 = time.perf_counter()
    with jobstats.job_group(spark, "nightly"):
        rep = NightlyJob(spark, conf).run(last)
    wall = time.perf_counter() - t0
    jobs, seconds = jobstats.report(spark), jobstats.seconds()
    jobstats.stop()
    after = lakehouse.table_versions(spark, conf, ALL_TABLES, missing_ok=True)
    ok = [(r.stage, r.status) for r in rep.records] == [("migrate", SUCCEEDED)]
    commits = {name: after[name] - (before[name] if before[name] is not None else -1)
               for name in after if after[name] is not None and after[name] != before[name]}

    figures = {
        "night": str(last), "warm": args.warm, "ok": ok, "events_total": n_events, "cpus": os.cpu_count(),
        "write_threads": conf.spark.write_threads, "commit_s": round(seconds.get("migrate:commit", 0.0), 2),
        "night_events": rep.records[0].result.rows_in if rep.records else None,
        "wall_s": round(wall, 1), "jobs_total": sum(jobs.values()),
        "blocks": [{"block": name, "jobs": jobs[name], "seconds": round(seconds[name], 2)} for name in jobs],
        "commits_total": sum(commits.values()), "commits": commits,
    }
    print(f"\n### write_threads={conf.spark.write_threads}")
    print("\n| block | Spark jobs | seconds (nested included) |\n|---|---:|---:|")
    for b in figures["blocks"]:
        print(f"| {b['block']} | {b['jobs']} | {b['seconds']} |")
    print(f"| **total** | **{figures['jobs_total']}** | **{figures['wall_s']}** |")
    print(f"Delta commits (run lock not included): {figures['commits_total']} {commits}")
    return figures

if __name__ == "__main__":
    raise SystemExit(main())
