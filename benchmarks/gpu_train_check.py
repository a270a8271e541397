"""Short GPU training check: SASRec through Ray Train with use_gpu=True on generated data; prints samples/s.

No Spark and no lakehouse: sequences are built in pandas from driftrec.synthetic, so the check needs only the
Python environment (torch with CUDA, ray). Exercises the NCCL backend and bf16 autocast path of the trainer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd


def sequences(events: pd.DataFrame, max_len: int) -> pd.DataFrame:
    rows = []
    for uid, g in events.sort_values(["user_id", "timestamp", "item_id"]).groupby("user_id", sort=True):
        items, ts = g["item_id"].to_numpy(), g["timestamp"].to_numpy()
        for end in range(len(items), 1, -(max_len + 1)):
            start = max(0, end - max_len - 1)
            rows.append({"user_id": uid, "chunk": len(rows), "item_ids": items[start:end].tolist(),
                         "event_ts": ts[start:end].tolist(), "interest_categories": [], "interest_p": []})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--loss", default="full", choices=["full", "sampled"])
    ap.add_argument("--cpu", action="store_true", help="smoke-test the script without a GPU")
    args = ap.parse_args()

    import ray
    import torch

    from driftrec.config import SyntheticConfig, TrainingConfig
    from driftrec.models.batches import extend_space
    from driftrec.models.sasrec import SASRecParams
    from driftrec.synthetic import generate
    from ray_trainers.sasrec_trainer import fit

    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, "
          f"devices: {torch.cuda.device_count()}", flush=True)
    t0 = time.perf_counter()
    data = generate(SyntheticConfig(users=args.users, items=args.items, categories=16, days=30, seed=1))
    tcfg = TrainingConfig(num_workers=args.workers, use_gpu=not args.cpu, epochs=args.epochs,
                          batch_size=args.batch_size, d_model=64, layers=2, max_seq_len=50, loss=args.loss)
    seqs = sequences(data.events, tcfg.max_seq_len)
    rng = np.random.default_rng(0)  # stand-in unit text vectors: this check times training, not text quality
    unit = rng.normal(size=(len(data.items), 384))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    side = pd.DataFrame({"item_id": data.items["item_id"], "category": [c[0] for c in data.items["categories"]],
                         "embedding": list(unit.astype(np.float32))})
    space = extend_space(np.zeros(0, np.int64), [], side, 384)
    params = SASRecParams(n_items=space.n_items, n_categories=len(space.categories), text_dim=384,
                          max_seq_len=tcfg.max_seq_len, d_model=tcfg.d_model, heads=tcfg.heads, layers=tcfg.layers,
                          dropout=tcfg.dropout, use_text=True)
    print(f"data: {len(data.events)} events, {len(seqs)} sequences, {space.n_items} items "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    ray.init(include_dashboard=False, **({"num_cpus": args.workers + 1} if args.cpu else {}))
    with tempfile.TemporaryDirectory() as storage:
        t0 = time.perf_counter()
        res = fit(ray.data.from_pandas(seqs).materialize(), space, params, tcfg, storage_path=storage,
                  run_name="gpu-check")
        wall = time.perf_counter() - t0
    m = res.metrics
    out = {"workers": args.workers, "loss": args.loss, "epochs": args.epochs, "wall_s": round(wall, 1),
           "samples_per_epoch": m.get("samples"), "last_epoch_samples_per_s": round(m["samples_per_s"], 1),
           "steady_samples_per_s": round(m["steady_samples_per_s"], 1), "final_loss": round(m["loss"], 4)}
    print("RESULT " + json.dumps(out), flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
