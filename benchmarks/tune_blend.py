"""Choose ``topk.blend_weight`` on a validation day: NDCG@10 / HR@10 of the blended top-k score over a weight grid.

Everything up to day V (the day before the data's last day D) builds the migration state and trains the model; each
user active on D is asked for the first item they took on D that they had not taken before, ranked against the whole
catalogue by ``(1 - w) * model + w * migration`` with consumed items excluded, exactly as the top-k job scores.
Nothing from D reaches the state, the model or the popularity counts. ``w = 0`` is the model alone, ``w = 1`` the
migration engine alone::

    python benchmarks/tune_blend.py --out /tmp/tune_blend                   # the demo's generated data
    python benchmarks/tune_blend.py --out /tmp/tune_blend --set synthetic.users=5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def validation_targets(events: pd.DataFrame, users: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """``(user_id, target)``: each user's first item on ``day`` not already in their history (their consumed set)."""
    on_day = events[events["event_date"] == day].sort_values(["user_id", "event_ts", "event_id"])
    consumed = {int(u): set(map(int, c)) for u, c in zip(users["user_id"], users["consumed"], strict=True)
                if c is not None}
    rows = []
    for u, g in on_day.groupby("user_id", sort=True):
        seen = consumed.get(int(u))
        if seen is None:
            continue  # no history before the day: a cold-start user, not what the blend decides
        fresh = [int(i) for i in g["item_id"] if int(i) not in seen]
        if fresh:
            rows.append((int(u), fresh[0]))
    return pd.DataFrame(rows, columns=["user_id", "target"])


def blend_grid(assets, pdf: pd.DataFrame, targets: np.ndarray, grid=GRID, batch: int = 256) -> pd.DataFrame:
    """Per blend weight: NDCG@10, HR@10 (full catalogue, consumed items excluded) over the rows of ``pdf``."""
    from driftrec.models.evaluation import hit_rate_at_k, ndcg_at_k, target_ranks
    from spark_udfs.topk import build_model, score_parts

    model = build_model(assets)
    index = assets.index
    ranks = {w: [] for w in grid}
    for lo in range(0, len(pdf), batch):
        b = pdf.iloc[lo : lo + batch].reset_index(drop=True)
        _, _, _, migration, model_p, _ = score_parts(assets, b, model, with_model=True)
        mask = np.zeros_like(migration, dtype=bool)
        for u, consumed in enumerate(b["consumed"]):
            pos = index.get_indexer(np.asarray(consumed, dtype=np.int64))
            mask[u, pos[pos >= 0]] = True
        target = index.get_indexer(targets[lo : lo + batch])
        for w in grid:
            score = np.where(mask, -np.inf, (1.0 - w) * model_p + w * migration)
            ranks[w].append(target_ranks(score, target))
    out = []
    for w in grid:
        r = np.concatenate(ranks[w])
        out.append({"blend_weight": w, "ndcg_at_10": ndcg_at_k(r, 10), "hit_rate_at_10": hit_rate_at_k(r, 10),
                    "users": len(r)})
    return pd.DataFrame(out)


def bench_config(root: Path, args):
    """The run's config: the root set as given (never pasted into TOML), so any character in the path survives."""
    from driftrec.config import load_config

    return load_config(overrides=['lakehouse.database="tune_blend"', "spark.shuffle_partitions=4",
                                  "topk.all_users=true", *args.overrides], values={"lakehouse.root": str(root)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (lakehouse, figures)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    args = ap.parse_args(argv)

    import ray
    from pyspark.sql import functions as F

    from driftrec import lakehouse
    from driftrec.spark import build_spark
    from driftrec.synthetic import write_dataset
    from driftrec.tables import EVENTS
    from jobs.embed_items import EmbedItemsJob
    from jobs.ingest import IngestJob
    from jobs.migrate import MigrationJob
    from jobs.topk import TopKJob
    from jobs.train import TrainJob

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    conf = bench_config(out / "lakehouse", args)
    spark = build_spark(conf, app_name="tune-blend", local=True)
    spark.sparkContext.setLogLevel("ERROR")
    figures: dict = {"synthetic": conf.synthetic.model_dump(), "training_epochs": conf.training.epochs}
    started = time.perf_counter()

    source = write_dataset(conf.synthetic, out / "source")
    ingest = IngestJob(spark, conf)
    ingest.run(ingest.plan(events=[source["events_dir"]], items=[source["items"]], fmt="parquet"))
    events = lakehouse.read_table(spark, conf, EVENTS)
    first, last = events.agg(F.min("event_date"), F.max("event_date")).first()
    valid_day, through = last, last - dt.timedelta(days=1)
    MigrationJob(spark, conf).backfill(first, through)
    EmbedItemsJob(spark, conf).run()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        train = TrainJob(spark, conf).run(through)
    finally:
        ray.shutdown()
    figures["pipeline_s"] = round(time.perf_counter() - started, 1)

    prep = TopKJob(spark, conf).prepare(through)
    users = prep.users.where(F.size("item_ids") > 0).orderBy("user_id").toPandas()
    day_events = events.where(F.col("event_date") == F.lit(valid_day)).select(
        "user_id", "item_id", "event_ts", "event_id", "event_date").toPandas()
    targets = validation_targets(day_events, users, valid_day)
    pdf = users.merge(targets, on="user_id")
    grid = blend_grid(prep.assets, pdf, pdf["target"].to_numpy(np.int64))
    best = grid.loc[grid["ndcg_at_10"].idxmax()]
    figures.update(model_version=train.version if hasattr(train, "version") else None, valid_day=str(valid_day),
                   users=len(pdf), grid=grid.round(4).to_dict("records"), best_blend_weight=float(best["blend_weight"]),
                   total_s=round(time.perf_counter() - started, 1))
    print(grid.round(4).to_string(index=False))
    print(f"best blend_weight on {valid_day}: {best['blend_weight']} (NDCG@10 {best['ndcg_at_10']:.4f})")
    (out / "tune_blend.json").write_text(json.dumps(figures, indent=1, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
