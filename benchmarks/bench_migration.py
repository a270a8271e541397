"""Benchmark the migration engine: a full backfill vs one incremental night, on generated data.

Generates ``--days`` days of synthetic events (``driftrec.synthetic.write_dataset``, default ~6M events), loads them
into a fresh lakehouse's ``events``/``items`` tables (not timed), then times

* the backfill of every night but the last (events/s), staged in memory and committed per batch, and
* one incremental night on top of it (the nightly path: reads that date's events and MERGEs what it touched),
  and a rerun of that night (which first restores the versions from before it, as a real rerun does);

and prints the ratio night / backfill (the issue asks for well under 1/10 with 1/30 of the data per night) and
peak memory: the Python driver's peak RSS and the JVM's (``VmHWM`` of the java child process).

    python benchmarks/bench_migration.py --out /tmp/bench_migration            # ~6M events, 30 days
    python benchmarks/bench_migration.py --out /tmp/bm_small --users 2000      # quick smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import resource
import time
from pathlib import Path

from pyspark.sql import functions as F

from driftrec import lakehouse
from driftrec.config import SyntheticConfig, load_config
from driftrec.spark import build_spark
from driftrec.synthetic import write_dataset
from driftrec.tables import EVENTS, ITEMS
from jobs.migrate import MigrationJob


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _java_children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == pid and "java" in (d / "cmdline").read_bytes().decode(errors="ignore"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def load_lakehouse(spark, conf, data_dir: Path) -> int:
    """Synthetic parquet -> ``events`` and ``items`` Delta tables (what the ingest job would do)."""
    ev = spark.read.parquet(str(data_dir / "events"))
    ev = ev.withColumn("event_ts", F.timestamp_seconds("timestamp"))
    events = ev.select(
        F.sha2(F.concat_ws("|", "user_id", "item_id", "event_type", "timestamp"), 256).alias("event_id"),
        "user_id", "item_id", "event_type", "event_ts", "weight",
        F.lit("synthetic").alias("source"),
        F.current_timestamp().alias("ingested_at"),
        F.to_date("event_ts").alias("event_date"),
    )
    lakehouse.append(spark, conf, EVENTS, events)
    items = spark.read.parquet(str(data_dir / "items.parquet")).select(
        "item_id", "title", "categories", "text",
        F.sha2(F.concat_ws("|", "title", F.array_join("categories", ","), "text"), 256).alias("content_hash"),
        F.lit("synthetic").alias("source"),
        F.current_timestamp().alias("updated_at"),
    )
    lakehouse.merge_upsert(spark, conf, ITEMS, items)
    return lakehouse.read_table(spark, conf, EVENTS).count()


def bench_config(root: Path, args):
    """The run's config: the root set as given (never pasted into TOML), so any character in the path survives."""
    return load_config(overrides=[
        'lakehouse.database="bench_migration"',
        f"spark.shuffle_partitions={args.shuffle_partitions}", f'spark.driver_memory="{args.driver_memory}"',
        'spark.conf={"spark.databricks.delta.snapshotPartitions" = "4"}',
        *([f"migration.commit_every_nights={args.commit_every}"] if args.commit_every else []),
    ], values={"lakehouse.root": str(root)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="work directory (data + lakehouse)")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--categories", type=int, default=12)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--events-per-user-day", type=float, default=2.0)
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--commit-every", type=int, help="migration.commit_every_nights for the backfill")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    cfg = SyntheticConfig(users=args.users, items=args.items, categories=args.categories, days=args.days,
                          events_per_user_day=args.events_per_user_day, seed=7)
    data_dir = out / "data"
    if not (data_dir / "truth.json").exists():
        t0 = time.time()
        info = write_dataset(cfg, data_dir)
        print(f"generated {info['n_events']} events in {time.time() - t0:.1f}s -> {data_dir}", flush=True)
    conf = bench_config(out / "lakehouse", args)
    spark = build_spark(conf, app_name="bench-migration", local=True)
    spark.sparkContext.setLogLevel("ERROR")
    # Each night's summary line (driftrec.migrate logs one per night), timestamped, as progress.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if lakehouse.table_exists(spark, conf, EVENTS):
        n_events = lakehouse.read_table(spark, conf, EVENTS).count()
    else:
        t0 = time.time()
        n_events = load_lakehouse(spark, conf, data_dir)
        print(f"loaded {n_events} events into Delta in {time.time() - t0:.1f}s", flush=True)

    start = dt.date.fromisoformat(cfg.start_date)
    end = start + dt.timedelta(days=args.days - 1)
    job = MigrationJob(spark, conf)
    # The backfill: every night but the last, staged and committed in batches (migration.commit_every_nights).
    t0 = time.time()
    reports = job.backfill(start, end - dt.timedelta(days=1))
    backfill_s = time.time() - t0
    backfill_events = sum(r.n_events for r in reports)
    print(f"backfill {start}..{reports[-1].ds}: {backfill_events} events in {backfill_s:.1f}s", flush=True)
    # One incremental night on top of that state: its own batch, MERGEs of what it touched.
    t = time.time()
    (night,) = job.run(end)
    night_s = time.time() - t
    print(f"night {end}: {night.n_events} events in {night_s:.1f}s (a={night.a:.3f} b={night.b:.3f} "
          f"{night.method})", flush=True)
    # A rerun of that night restores the versions from before it and recomputes it.
    t = time.time()
    job.run(end)
    rerun_s = time.time() - t

    py_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    jvm_peak_mib = sum(_vm_hwm_kib(p) for p in _java_children(os.getpid())) / 1024
    result = {
        "events": n_events,
        "days": args.days,
        "backfill_nights": len(reports),
        "backfill_events": backfill_events,
        "backfill_s": round(backfill_s, 1),
        "backfill_events_per_s": round(backfill_events / backfill_s, 1),
        "night_events": night.n_events,
        "night_s": round(night_s, 1),
        "night_events_per_s": round(night.n_events / night_s, 1),
        "night_rerun_s": round(rerun_s, 1),
        "night_over_backfill": round(night_s / backfill_s, 4),
        "peak_rss_python_mib": round(py_peak_mib, 1),
        "peak_rss_jvm_mib": round(jvm_peak_mib, 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    (out / "bench_migration.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
