"""Generated data of 10M+ events through ingest and the whole nightly pipeline, with time and peak memory per stage.

Every step runs as the ``driftrec`` command a user would run, in its own process: ``ingest`` of the generated
Parquet days, optionally ``migrate --rebuild-through`` (the history before the last day, one pass), then
``nightly --date`` for the last day (migrate, embed_items, train, topk); training and top-k read every stored event. A sampler reads, once a second, the proportional set size
(PSS, so pages shared between processes count once) of the command's whole process tree: the Python driver, the
Spark JVM, its Python workers, Ray's processes and the training workers. It also reads the machine's used memory
(MemTotal - MemAvailable) over the level before the command started. Nightly stages are told apart by their banners.

    python benchmarks/bench_nightly.py --out /tmp/bench_nightly            # 100k users x 20k items, ~10M events
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

BANNER = re.compile(r"^=== (\S+)\s+\[\d+/\d+\] (\w+) ===")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pss_kib(root: int) -> tuple[int, int]:
    """(summed PSS, largest single PSS) of ``root`` and all its descendants, in KiB."""
    kids = _children()
    todo, total, largest = [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        kib = int(line.split()[1])
                        total += kib
                        largest = max(largest, kib)
                        break
        except OSError:
            continue
    return total, largest


def used_kib() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return info["MemTotal"] - info["MemAvailable"]


class Step:
    """One command: its output streamed to a log, memory sampled, nightly stages split at their banners."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.phases: list[dict] = []  # {name, start, end, peak_pss, peak_proc, peak_used}

    def _phase(self, name: str, now: float) -> None:
        if self.phases:
            self.phases[-1]["end"] = now
        self.phases.append({"name": name, "start": now, "end": None, "peak_pss": 0, "peak_proc": 0, "peak_used": 0})

    def run(self) -> int:
        base_used = used_kib()
        t0 = time.perf_counter()
        self._phase(self.name, t0)
        proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=self.env)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pss, largest = tree_pss_kib(proc.pid)
                ph = self.phases[-1]
                ph["peak_pss"] = max(ph["peak_pss"], pss)
                ph["peak_proc"] = max(ph["peak_proc"], largest)
                ph["peak_used"] = max(ph["peak_used"], used_kib() - base_used)
                done.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with open(self.log_path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                m = BANNER.match(line)
                if m:
                    self._phase(f"nightly:{m.group(2)}", time.perf_counter())
                    print(f"  [{time.perf_counter() - t0:7.1f}s] {line.strip()}", flush=True)
                elif " done in " in line or line.startswith(("FAILED", "ingested", "rebuilt")):
                    print(f"  [{time.perf_counter() - t0:7.1f}s] {line.strip()[:200]}", flush=True)
        rc = proc.wait()
        done.set()
        sampler.join()
        self.phases[-1]["end"] = time.perf_counter()
        return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (generated data, lakehouse, logs)")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--events-per-user-day", type=float, default=5.0)
    ap.add_argument("--session-length", type=float, default=10.0, help="synthetic.mean_session_length")
    ap.add_argument("--driver-memory", default="12g")
    ap.add_argument("--shuffle-partitions", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1, help="training epochs (a first model: no warm start)")
    ap.add_argument("--chunks-per-user", type=int, default=1,
                    help="training.max_chunks_per_user: 1 trains on each user's latest max_seq_len events")
    ap.add_argument("--fresh", action="store_true", help="delete the lakehouse first (keeps generated data)")
    ap.add_argument("--rebuild-history", action="store_true",
                    help="build the migration state through the day before the last from all history (one pass) "
                         "before the nightly; without it the nightly's migrate starts from an empty state")
    ap.add_argument("--only", nargs="+", choices=("ingest", "migrate_rebuild", "nightly"),
                    help="run only these steps (a rerun of nightly resumes at the first stage that did not succeed)")
    args = ap.parse_args(argv)

    from driftrec.config import SyntheticConfig
    from driftrec.synthetic import write_dataset

    out = args.out.resolve()
    data, root, logs = out / "data", out / "lakehouse", out / "logs"
    if args.fresh and root.exists():
        shutil.rmtree(root)
    logs.mkdir(parents=True, exist_ok=True)
    figures: dict = {"cpus": os.cpu_count(), "users": args.users, "items": args.items, "days": args.days}

    cfg = SyntheticConfig(users=args.users, items=args.items, days=args.days, categories=16, seed=5,
                          events_per_user_day=args.events_per_user_day, mean_session_length=args.session_length)
    if not (data / "truth.json").exists():
        t0 = time.perf_counter()
        info = write_dataset(cfg, data)
        figures["generate_s"] = round(time.perf_counter() - t0, 1)
        (data / "info.json").write_text(json.dumps({k: info[k] for k in ("n_events", "n_items", "n_users")}))
    info = json.loads((data / "info.json").read_text())
    figures["events_generated"] = info["n_events"]
    last = dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=args.days - 1)
    print(f"{info['n_events']:,} events, {args.users:,} users x {args.items:,} items, {args.days} days; last day {last}",
          flush=True)

    exe = shutil.which("driftrec", path=str(Path(sys.executable).parent)) or "driftrec"
    common = [
        "--lakehouse", str(root), "--set", 'lakehouse.database="bench_nightly"',
        "--set", f'spark.driver_memory="{args.driver_memory}"',
        "--set", f"spark.shuffle_partitions={args.shuffle_partitions}",
        "--set", f"training.epochs={args.epochs}", "--set", 'training.loss="sampled"',
        "--set", f"training.max_chunks_per_user={args.chunks_per_user}",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    steps = [
        Step("ingest", [exe, "ingest", "--events", str(data / "events"), "--items", str(data / "items.parquet"),
                        "--format", "parquet", *common], logs / "ingest.log", env),
        Step("migrate_rebuild", [exe, "migrate", "--rebuild-through", str(last - dt.timedelta(days=1)), *common],
             logs / "migrate_rebuild.log", env),
        Step("nightly", [exe, "nightly", "--date", str(last), *common], logs / "nightly.log", env),
    ]
    if not args.rebuild_history:
        steps = [s for s in steps if s.name != "migrate_rebuild"]
    if args.only:
        steps = [s for s in steps if s.name in args.only]
    rows = []
    for step in steps:
        print(f"\n## {step.name}: {' '.join(step.argv[1:3])} ... (log {step.log_path})", flush=True)
        rc = step.run()
        for ph in step.phases:
            rows.append({
                "step": ph["name"], "seconds": round(ph["end"] - ph["start"], 1),
                "peak_tree_pss_gib": round(ph["peak_pss"] / 2**20, 2),
                "peak_largest_process_gib": round(ph["peak_proc"] / 2**20, 2),
                "peak_machine_used_gib": round(ph["peak_used"] / 2**20, 2),
            })
        if rc != 0:
            print(f"{step.name} exited {rc}; see {step.log_path}", flush=True)
            figures["failed"] = step.name
            break
    figures["stages"] = rows
    # The nightly's "setup" phase (before the first banner) is the Spark/Ray start and the run lock.
    print("\n| step | seconds | peak PSS, process tree (GiB) | largest process (GiB) | machine used over start (GiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['seconds']} | {r['peak_tree_pss_gib']} | {r['peak_largest_process_gib']} | "
              f"{r['peak_machine_used_gib']} |")
    (out / "bench_nightly.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 1 if "failed" in figures else 0


if __name__ == "__main__":
    raise SystemExit(main())
