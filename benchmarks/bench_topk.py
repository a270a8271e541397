"""Top-k throughput: the Spark job vs the same scoring in one plain torch process vs Spark MLlib ALS.

For a data set (ml-latest-small read in place, or generated users x items) the script builds what the job needs
(one migration night for the state; a registered SASRec with untrained weights: throughput does not depend on the
weights), then times, in one run on the same users and items:

* ``spark_job``: ``TopKJob.run`` end to end (reads tables, builds per-user inputs, scores in ``mapInPandas``,
  writes the Delta partition);
* ``torch_process``: the same scorer (``spark_udfs.topk.score_batch``) over the same users in the driver process,
  torch using every core: the machine's limit for this scoring, inputs prepared beforehand and not timed;
* ``torch_limit``: the machine's limit for the model part alone, as issue 21 defines it: one process, all cores,
  float32, no Spark and no blend: the served model's batched forward (``model.encode``) over the same users'
  histories (inputs built beforehand, not timed), the product with the item vectors and ``torch.topk``, in batches of
  ``--limit-batch`` (>= 1,024) users. Also reported: the same with the full all-positions forward
  (``hidden()[:, -1]``, the scorer's forward before issue 21) and the product + ``topk`` alone;
* ``torch_process_full_forward``: the scorer path above with the model's full forward, side by side with the
  last-position one it uses now;
* ``candidates``: the same torch process with the candidate step forced on (``topk.candidate_threshold=0``), and
  the step's recall: the share of the full-catalogue top-k rows it keeps, over a sample of users;
* ``als``: ``ALS.recommendForUserSubset`` for the same users (implicit ALS of the same rank, fit timed apart).

    python benchmarks/bench_topk.py --dataset movielens --out /tmp/bench_topk
    python benchmarks/bench_topk.py --dataset synthetic --users 100000 --items 20000 --out /tmp/bench_topk
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
RESULTS = Path(__file__).resolve().parent / "results" / "topk.json"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.*` must import


def full_forward(model):
    """``model.encode`` as it was before issue 21: every position of every layer, then the last row."""
    return lambda seq, interest, items=None: model.hidden(seq, interest, items)[:, -1]


def torch_limit(model, seq: np.ndarray, interest: np.ndarray, k: int, batch: int, encode=None) -> dict:
    """Seconds of the plain-torch limit over prepared inputs: ``encode`` (default ``model.encode``), the product
    with the item vectors, ``torch.topk``; float32 throughout. Also the product + ``topk`` alone on the same user
    vectors. Returns ``{"s": ..., "matmul_topk_s": ...}``."""
    import torch

    encode = encode or model.encode
    with torch.no_grad():
        items = model.item_vectors()
        out_t = items[1:].T.contiguous()
        seq_t, int_t = torch.as_tensor(seq), torch.as_tensor(interest)
        hs = []
        t0 = time.perf_counter()
        for start in range(0, len(seq), batch):
            h = encode(seq_t[start : start + batch], int_t[start : start + batch], items)
            torch.topk(h @ out_t, k, dim=1)
            hs.append(h)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        for h in hs:
            torch.topk(h @ out_t, k, dim=1)
        return {"s": total, "matmul_topk_s": time.perf_counter() - t0}


def register_untrained_model(spark, conf, ds: dt.date, events) -> int:
    """A SASRec over the whole catalogue with initial weights, registered as the current version."""
    from driftrec import registry
    from driftrec.models.batches import extend_space
    from driftrec.models.checkpoint import save_checkpoint
    from driftrec.models.sasrec import SASRec, SASRecParams
    from driftrec.serving import catalogue_side_info, text_dim_of

    t = conf.training
    side = catalogue_side_info(spark, conf, events.select("item_id").distinct(), t.use_text)
    space = extend_space(np.zeros(0, np.int64), [], side, text_dim_of(side))
    model = SASRec(SASRecParams(n_items=space.n_items, n_categories=len(space.categories), text_dim=space.text_dim,
                                max_seq_len=t.max_seq_len, d_model=t.d_model, heads=t.heads, layers=t.layers,
                                dropout=t.dropout, use_text=t.use_text))
    model.set_side_info(space.text, space.has_text, space.item_category)
    version = registry.next_version(spark, conf)
    path = Path(conf.lakehouse.root) / "models" / t.model_name / f"v{version:05d}"
    save_checkpoint(path, model, space, {"version": version, "trained_through": ds.isoformat()})
    registry.record(spark, conf, version=version, model_name=t.model_name, trained_through=ds, parent_version=None,
                    config={}, metrics={"ndcg_at_10": 0.0}, checkpoint=str(path),
                    decision=registry.Decision(True, "benchmark: untrained weights"))
    return version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (lakehouse, figures)")
    ap.add_argument("--dataset", choices=("movielens", "synthetic"), default="movielens")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens directory")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--all-users", action="store_true", help="score every user, not only the recently active")
    ap.add_argument("--driver-memory", default="10g")
    ap.add_argument("--skip-als", action="store_true")
    ap.add_argument("--recall-users", type=int, default=2000, help="users sampled for the candidate recall")
    ap.add_argument("--limit-batch", type=int, default=1024, help="users per batch of the plain-torch limit")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="where the figures are written as JSON as well (the committed run: the issue's size)")
    ap.add_argument("--train-epochs", type=int, default=0,
                    help="train the served model this many epochs (the real training job) instead of registering "
                         "untrained weights; the candidate recall is only meaningful for a trained model")
    args = ap.parse_args(argv)

    import torch
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from driftrec import lakehouse
    from driftrec.config import SyntheticConfig, load_config
    from driftrec.spark import build_spark
    from driftrec.tables import EVENTS
    from jobs.migrate import MigrationJob
    from jobs.topk import TopKJob
    from spark_udfs.topk import score_batch

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = out / f"lakehouse-{args.dataset}"
    conf = load_config(values={"lakehouse.root": str(root)}, overrides=[
        'lakehouse.database="bench_topk"', "spark.shuffle_partitions=4",
        f'spark.driver_memory="{args.driver_memory}"', "training.use_text=false", f"topk.k={args.k}",
        f"topk.all_users={str(args.all_users).lower()}",
    ])
    spark = build_spark(conf, app_name="bench-topk", local=True)
    spark.sparkContext.setLogLevel("ERROR")
    figures: dict = {"dataset": args.dataset, "k": args.k, "cpus": os.cpu_count()}

    t0 = time.perf_counter()
    if not lakehouse.table_exists(spark, conf, EVENTS):
        if args.dataset == "movielens":
            from benchmarks.bench_training import load_movielens

            load_movielens(spark, conf, args.data)
        else:
            from benchmarks.bench_migration import load_lakehouse
            from driftrec.synthetic import write_dataset

            cfg = SyntheticConfig(users=args.users, items=args.items, days=args.days, events_per_user_day=2.0,
                                  categories=12, seed=11)
            write_dataset(cfg, out / "synthetic")
            load_lakehouse(spark, conf, out / "synthetic")
    events = lakehouse.read_table(spark, conf, EVENTS)
    last = events.agg(F.max("event_date")).first()[0]
    figures.update(events=events.count(), ds=str(last), load_s=round(time.perf_counter() - t0, 1))

    t0 = time.perf_counter()
    MigrationJob(spark, conf).run(last)
    figures["migration_night_s"] = round(time.perf_counter() - t0, 1)
    if args.train_epochs:
        import ray

        from jobs.train import TrainJob

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            tconf = conf.model_copy(update={"training": conf.training.model_copy(
                update={"epochs": args.train_epochs, "warm_start": False})})
            TrainJob(spark, tconf).run(last)
        finally:
            ray.shutdown()
        figures["train_s"] = round(time.perf_counter() - t0, 1)
    else:
        register_untrained_model(spark, conf, last, events)

    job = TopKJob(spark, conf)
    t0 = time.perf_counter()
    report = job.run(last)
    spark_s = time.perf_counter() - t0
    figures.update(users=report.users, catalogue=report.catalogue, rows=report.rows, spark_job_s=round(spark_s, 1),
                   spark_job_users_per_s=round(report.users / spark_s, 1))
    print(report.summary(), flush=True)

    # The same scoring in one process over the same users; inputs built and collected first (not timed).
    t0 = time.perf_counter()
    prep = job.prepare(last)
    figures["prepare_s"] = round(time.perf_counter() - t0, 1)  # the job's input side alone (read, build, checkpoint)
    assets, users = prep.assets, prep.users
    pdf = users.orderBy("user_id").toPandas()
    from spark_udfs.topk import build_model

    model = build_model(assets)
    torch.set_num_threads(os.cpu_count() or 1)
    batch = conf.topk.users_per_batch
    t0 = time.perf_counter()
    n_rows = 0
    for start in range(0, len(pdf), batch):
        n_rows += len(score_batch(assets, pdf.iloc[start : start + batch].reset_index(drop=True), model))
    torch_s = time.perf_counter() - t0
    figures.update(torch_process_s=round(torch_s, 1), torch_process_users_per_s=round(len(pdf) / torch_s, 1),
                   torch_rows=n_rows, spark_over_torch_users_per_s=round((report.users / spark_s) / (len(pdf) / torch_s), 3))
    print(json.dumps({k: figures[k] for k in ("spark_job_users_per_s", "torch_process_users_per_s")}), flush=True)

    # The scorer before issue 21 (the full all-positions forward), same users and batches, same process.
    t0 = time.perf_counter()
    model.encode = full_forward(model)
    try:
        for start in range(0, len(pdf), batch):
            score_batch(assets, pdf.iloc[start : start + batch].reset_index(drop=True), model)
    finally:
        del model.encode  # back to the class's method
    old_s = time.perf_counter() - t0
    figures.update(torch_process_full_forward_users_per_s=round(len(pdf) / old_s, 1),
                   torch_process_over_full_forward=round(old_s / torch_s, 3))

    # The plain-torch limit: model + product + topk only, users with history, inputs prepared first.
    from spark_udfs.topk import model_inputs

    known = pdf[[x is not None and len(x) > 0 for x in pdf["item_ids"]]].reset_index(drop=True)
    seq, interest = model_inputs(assets, known)
    lim_batch = max(args.limit_batch, 1024)
    lim = torch_limit(model, seq, interest, args.k, lim_batch)
    lim_full = torch_limit(model, seq, interest, args.k, lim_batch, full_forward(model))
    limit_ups = len(known) / lim["s"]
    spark_ups = report.users / spark_s
    figures.update(
        torch_limit_users=len(known), torch_limit_batch=lim_batch, torch_limit_threads=torch.get_num_threads(),
        torch_limit_s=round(lim["s"], 2), torch_limit_users_per_s=round(limit_ups, 1),
        torch_limit_full_forward_users_per_s=round(len(known) / lim_full["s"], 1),
        torch_limit_matmul_topk_users_per_s=round(len(known) / lim["matmul_topk_s"], 1),
        spark_over_limit_users_per_s=round(spark_ups / limit_ups, 3),
        spark_over_full_forward_limit_users_per_s=round(spark_ups / (len(known) / lim_full["s"]), 3),
        torch_process_over_limit_users_per_s=round((len(pdf) / torch_s) / limit_ups, 3),
    )
    print(json.dumps({k: figures[k] for k in ("torch_limit_users_per_s", "torch_limit_full_forward_users_per_s",
                                              "torch_limit_matmul_topk_users_per_s",
                                              "spark_over_limit_users_per_s")}), flush=True)

    # The candidate step on the same users: lists built on the driver (timed apart), scoring timed like the above,
    # and its recall against the full-catalogue rows just computed.
    from spark_udfs.topk import candidate_recall

    cjob = TopKJob(spark, conf.model_copy(update={"topk": conf.topk.model_copy(update={"candidate_threshold": 0})}))
    t0 = time.perf_counter()
    cassets = cjob.assets(prep.served, cjob._migration_state(last))
    figures["candidate_lists_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    for start in range(0, len(pdf), batch):
        score_batch(cassets, pdf.iloc[start : start + batch].reset_index(drop=True), model, candidates=True)
    cand_s = time.perf_counter() - t0
    sample = pdf.sample(n=min(len(pdf), args.recall_users), random_state=3).sort_values("user_id")
    recalls, widths = [], []
    for start in range(0, len(sample), batch):
        r, w = candidate_recall(cassets, sample.iloc[start : start + batch].reset_index(drop=True), model)
        recalls.append(r)
        widths.append(w)
    figures.update(candidate_torch_users_per_s=round(len(pdf) / cand_s, 1),
                   candidate_over_full_users_per_s=round(torch_s / cand_s, 3),
                   candidate_recall_at_k=round(float(np.mean(recalls)), 4) if recalls else None,
                   candidate_mean_set_size=round(float(np.mean(widths)), 1) if widths else None,
                   recall_users=len(sample), model_trained=bool(args.train_epochs))
    print(json.dumps({k: figures[k] for k in ("candidate_torch_users_per_s", "candidate_recall_at_k",
                                              "candidate_mean_set_size")}), flush=True)

    if not args.skip_als:
        ratings = events.where(F.col("event_date") <= F.lit(last)).groupBy(
            F.col("user_id").cast("int").alias("user"), F.col("item_id").cast("int").alias("item")
        ).agg(F.count(F.lit(1)).cast("float").alias("rating"))
        als = ALS(rank=conf.training.d_model, maxIter=5, regParam=0.05, implicitPrefs=True, alpha=10.0,
                  userCol="user", itemCol="item", ratingCol="rating", coldStartStrategy="drop", seed=7)
        t0 = time.perf_counter()
        fitted = als.fit(ratings)
        figures["als_fit_s"] = round(time.perf_counter() - t0, 1)
        subset = users.select(F.col("user_id").cast("int").alias("user"))
        t0 = time.perf_counter()
        n_als = fitted.recommendForUserSubset(subset, args.k).count()
        als_s = time.perf_counter() - t0
        figures.update(als_users=n_als, als_recommend_s=round(als_s, 1), als_users_per_s=round(n_als / als_s, 1),
                       spark_over_als_users_per_s=round((report.users / spark_s) / (n_als / als_s), 3))

    print(json.dumps(figures, indent=1))
    (out / f"bench_topk_{args.dataset}.json").write_text(json.dumps(figures, indent=1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(figures, indent=1) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
