"""The floor under every small job: what one tiny Delta operation costs in a local session, under JVM/Spark variants.

On test-sized data a night, a test and the demo are sums of such operations (a migration night: ~250 Spark jobs and
~12 commits), so this prints the price of each kind, measured in one warm session per variant: creating every table
of a fresh lakehouse, an append of 6 rows, a one-key MERGE, the same upsert as a ``replaceWhere`` on the key, a count
and a small aggregation collected; and how a stage attempt now writes its first ``pipeline_runs`` row (a lookup of
its key, then an append) next to the one-key MERGE it replaced. Each variant is a child process (JVM flags need a new JVM); the variants run one
after another, ``--rounds`` times in alternation, so compare them within one run.

    python benchmarks/bench_delta_ops.py                         # ~5 min here; figures in benchmarks/results/
    python benchmarks/bench_delta_ops.py --variants c1,c1_serial_gc --rounds 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "delta_ops.json"

# name -> (JAVA_TOOL_OPTIONS, Spark settings from a spark-defaults.conf)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "default_jit": ("", {}),
    "c1": ("-XX:TieredStopAtLevel=1", {}),  # what tests/conftest.py sets for every JVM the tests start
    "c1_serial_gc": ("-XX:TieredStopAtLevel=1 -XX:+UseSerialGC", {}),
    "c1_no_aqe": ("-XX:TieredStopAtLevel=1", {"spark.sql.adaptive.enabled": "false"}),
    "c1_no_wholestage_codegen": ("-XX:TieredStopAtLevel=1", {"spark.sql.codegen.wholeStage": "false"}),
}
OPS = ("create_all_tables", "append", "merge_one_key", "replace_where_one_key", "lookup_then_append_one_key", "count",
       "collect_small_agg")


def _child(repeats: int) -> dict:
    """Time each operation ``repeats`` times in one session (3 fresh lakehouses for table creation); the first call of
    each kind is reported apart (it pays class loading and compilation)."""
    from driftrec import lakehouse, sqltext, stage_runs
    from driftrec.config import load_config
    from driftrec.spark import build_spark
    from driftrec.tables import PIPELINE_RUNS

    def fresh():
        return load_config(overrides=[f'lakehouse.database="b_{uuid.uuid4().hex[:8]}"', "spark.shuffle_partitions=2",
                                      'spark.driver_memory="4g"'], values={"lakehouse.root": tempfile.mkdtemp()})

    conf = fresh()
    t0 = time.perf_counter()
    spark = build_spark(conf, app_name="bench_delta_ops", local=True)
    start_s = time.perf_counter() - t0
    ds, now = dt.date(2026, 1, 1), dt.datetime(2026, 1, 1)

    def rows(run_id: str, n: int = 1, status: str = "running"):
        return spark.createDataFrame(
            [dict(run_id=run_id, ds=ds, stage=f"s{i}", status=status, rows_in=1, rows_out=1, seconds=1.0,
                  model_version=None, detail="x", started_at=now, finished_at=None) for i in range(n)],
            schema=PIPELINE_RUNS.schema)

    def key(run_id: str) -> str:
        return " AND ".join([sqltext.equals("run_id", run_id), sqltext.equals("ds", ds), sqltext.equals("stage", "s0")])

    ops = {
        "create_all_tables": lambda i: lakehouse.ensure_tables(spark, fresh()),
        "append": lambda i: lakehouse.append(spark, conf, PIPELINE_RUNS, rows(f"a{i}", 6)),
        "merge_one_key": lambda i: lakehouse.merge_upsert(spark, conf, PIPELINE_RUNS, rows(f"a{i}", 1, "done"),
                                                          update_when="true", metrics=False),
        "replace_where_one_key": lambda i: lakehouse.replace_where(spark, conf, PIPELINE_RUNS, rows(f"a{i}", 1, "x"),
                                                                   key(f"a{i}"), metrics=False),
        # How stage_runs.attempt writes an attempt's first row (its key is new): a lookup, then an append.
        "lookup_then_append_one_key": lambda i: (stage_runs._has_row(spark, conf, f"n{i}", ds, "s0")
                                                 or lakehouse.append(spark, conf, PIPELINE_RUNS, rows(f"n{i}", 1))),
        "count": lambda i: lakehouse.read_table(spark, conf, PIPELINE_RUNS).count(),
        "collect_small_agg": lambda i: spark.range(100).selectExpr("id % 7 AS k").groupBy("k").count().collect(),
    }
    out = {"session_start_s": round(start_s, 3)}
    for name in OPS:
        times = []
        for i in range(min(repeats, 3) if name == "create_all_tables" else repeats):  # ~10 s each
            t = time.perf_counter()
            ops[name](i)
            times.append(time.perf_counter() - t)
        out[name] = {"first_s": round(times[0], 3), "median_after_first_s": round(statistics.median(times[1:]), 3)}
    spark.stop()
    return out


def _run_variant(name: str, repeats: int) -> dict:
    java_opts, settings = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_TOOL_OPTIONS", "SPARK_CONF_DIR")}
    with tempfile.TemporaryDirectory() as conf_dir:
        if java_opts:
            env["JAVA_TOOL_OPTIONS"] = java_opts
        if settings:
            Path(conf_dir, "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
            env["SPARK_CONF_DIR"] = conf_dir
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(repeats)], env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**figures, "process_wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=1, help="runs of the whole variant list, in alternation")
    ap.add_argument("--repeats", type=int, default=6, help="calls of each operation per session")
    ap.add_argument("--json", type=Path, default=RESULTS, help="where the figures go")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.repeats)))
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            runs[name].append(_run_variant(name, args.repeats))
            print(f"round {r + 1} {name}: process {runs[name][-1]['process_wall_s']} s", flush=True)
    table = {}
    for name, results in runs.items():
        table[name] = {"process_wall_s": statistics.median(x["process_wall_s"] for x in results),
                       "session_start_s": statistics.median(x["session_start_s"] for x in results),
                       **{op: statistics.median(x[op]["median_after_first_s"] for x in results) for op in OPS},
                       "first_calls_s": {op: statistics.median(x[op]["first_s"] for x in results) for op in OPS}}
    base = table.get("c1")
    print(f"\n{'variant':26s} {'wall':>6s} {'start':>6s} " + " ".join(f"{op[:14]:>14s}" for op in OPS))
    for name, row in table.items():
        print(f"{name:26s} {row['process_wall_s']:6.1f} {row['session_start_s']:6.1f} "
              + " ".join(f"{row[op]:14.3f}" for op in OPS))
    if base:
        print("\nprocess wall time relative to c1 (the tests' setting): "
              + ", ".join(f"{n} {row['process_wall_s'] / base['process_wall_s']:.2f}" for n, row in table.items()))
    report = {"cpus": os.cpu_count(), "rounds": args.rounds, "repeats": args.repeats,
              "unit": "seconds per call after the first, median", "variants": table}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
