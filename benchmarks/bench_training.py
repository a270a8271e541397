"""Training throughput (1 vs 2 Ray Train workers) and the text-initialisation ablation on MovieLens.

Loads ml-latest-small (read in place, never copied) into a scratch lakehouse as canonical events/items, encodes the
movie titles and genres with the sentence encoder (the real embed job), then trains cold-start models with the real
training job and prints samples/s (steady state: epochs after the first) and validation NDCG@10 (full-catalogue
ranking of each user's held-out most recent rating)::

    python benchmarks/bench_training.py --data /work/shared/data/ml-latest-small --epochs 8 --out bench.json

Torch threads in local mode (one worker trained in the driver), 1 against 2, alternated::

    python benchmarks/bench_training.py --workers 1 --threads 1,2,1,2 --epochs 4 --no-random \
        --set training.local_mode=true --set training.early_stopping_patience=0
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def load_movielens(spark, conf, data: Path) -> tuple[int, int]:
    from pyspark.sql import functions as F

    from driftrec import lakehouse
    from driftrec.tables import EVENTS, ITEMS

    ratings = pd.read_csv(data / "ratings.csv")
    movies = pd.read_csv(data / "movies.csv")
    ev = spark.createDataFrame(ratings.rename(columns={"userId": "user_id", "movieId": "item_id"}))
    ts = F.timestamp_seconds(F.col("timestamp").cast("bigint"))
    ev = ev.select(
        F.sha2(F.concat_ws("|", "user_id", "item_id", F.lit("rating"), "timestamp"), 256).alias("event_id"),
        F.col("user_id").cast("bigint"), F.col("item_id").cast("bigint"), F.lit("rating").alias("event_type"),
        ts.alias("event_ts"), F.col("rating").cast("double").alias("weight"), F.lit("ml-latest-small").alias("source"),
        F.current_timestamp().alias("ingested_at"), F.to_date(ts).alias("event_date"),
    )
    movies["categories"] = [[] if g == "(no genres listed)" else g.split("|") for g in movies["genres"]]
    it = spark.createDataFrame(movies[["movieId", "title", "categories"]].rename(columns={"movieId": "item_id"}),
                               "item_id bigint, title string, categories array<string>")
    it = it.select(
        "item_id", "title", "categories", F.lit(None).cast("string").alias("text"),
        F.sha2(F.concat_ws("|", "title", F.array_join("categories", ",")), 256).alias("content_hash"),
        F.lit("ml-latest-small").alias("source"), F.current_timestamp().alias("updated_at"),
    )
    lakehouse.merge_upsert(spark, conf, ITEMS, it)
    lakehouse.append(spark, conf, EVENTS, ev.repartition(4, "event_date"))
    last = pd.to_datetime(ratings["timestamp"].max(), unit="s").date()
    return len(ratings), last


def bench_config(root: Path, args, *extra: str):
    """The run's config plus ``extra`` overrides: the root set as given (never pasted into TOML), so any character
    in the path survives."""
    from driftrec.config import load_config

    return load_config(overrides=['lakehouse.database="bench"', "spark.shuffle_partitions=4",
                                  f"training.epochs={args.epochs}", "training.warm_start=false",
                                  # worker groups throughout: 1 vs 2 workers measures DDP, not Ray Train's local mode
                                  "training.local_mode=false", *args.overrides, *extra],
                       values={"lakehouse.root": str(root)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--lakehouse", type=Path, help="scratch lakehouse (default: a temp dir, removed afterwards)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="worker counts to time, e.g. 1,2")
    ap.add_argument("--threads", default="1",
                    help="torch threads per worker to time, e.g. 1,2 (training.cpus_per_worker; local mode: "
                         "training.local_mode_threads)")
    ap.add_argument("--no-random", action="store_true", help="skip the random-initialisation run (the ablation)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import ray

    from driftrec.spark import build_spark
    from jobs.embed_items import EmbedItemsJob
    from jobs.train import TrainJob

    tmp = None
    root = args.lakehouse or Path(tmp := tempfile.mkdtemp(prefix="driftrec-bench-"))
    conf = bench_config(root, args)
    spark = build_spark(conf, app_name="driftrec-bench", local=True)
    figures: dict = {"data": str(args.data), "epochs": args.epochs}
    t0 = time.perf_counter()
    n_events, last = load_movielens(spark, conf, args.data)
    figures.update(events=n_events, trained_through=str(last), load_s=round(time.perf_counter() - t0, 1))
    t0 = time.perf_counter()
    emb = EmbedItemsJob(spark, conf).run()
    figures.update(items_encoded=emb.candidates, embed_s=round(time.perf_counter() - t0, 1))
    workers_list = [int(w) for w in args.workers.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    ray.init(num_cpus=max(workers_list) * max(threads_list), include_dashboard=False)

    # Alternated, so a drift in the machine's load shows in both arms rather than in one.
    runs = [(w, t, True) for w in workers_list for t in threads_list]
    if not args.no_random:
        runs.append((1, threads_list[0], False))
    figures["runs"] = []
    for workers, threads, text in runs:
        name = f"bench-w{workers}-t{threads}-{'text' if text else 'random'}"
        c = bench_config(root, args, f"training.num_workers={workers}", f"training.use_text={str(text).lower()}",
                         f"training.cpus_per_worker={threads}", f"training.local_mode_threads={threads}",
                         f'training.model_name="{name}"')
        t0 = time.perf_counter()
        rep = TrainJob(spark, c).run(last)
        m = rep.metrics
        row = {"model": name, "workers": workers, "threads": threads, "text_init": text,
               "wall_s": round(time.perf_counter() - t0, 1),
               "samples_per_s": round(m["steady_samples_per_s"], 1), "ndcg_at_10": round(m["ndcg_at_10"], 4),
               "hit_rate_at_10": round(m["hit_rate_at_10"], 4),
               "popularity_ndcg_at_10": round(m["popularity_ndcg_at_10"], 4), "valid_users": m["valid_users"]}
        figures["runs"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    ray.shutdown()
    spark.stop()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
