"""A SASRec training step with the blocked full-softmax loss against the plain PyTorch one, side by side.

Both losses run in one process, alternating, on the same model, batch and threads (shapes of ml-latest-small by
default: 9,742 items, batches of 128 sequences of 50); each round restarts from the same weights, so the two
losses also see the same inputs. Prints ms per step, positions per second, the ratio, and the largest difference
between the two losses over the steps; writes ``benchmarks/results/bench_loss.json``.

    python benchmarks/bench_loss.py --rounds 2 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from driftrec.models import losses
from driftrec.models.sasrec import SASRec, SASRecParams

RESULTS = Path(__file__).resolve().parent / "results" / "bench_loss.json"
IMPLS = {"reference": losses.reference_full_softmax_loss, "blocked": losses.full_softmax_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=9742)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: every CPU")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, b, length = args.items, args.batch, args.seq_len
    start = SASRec(SASRecParams(n_items=n, n_categories=20, text_dim=384, max_seq_len=length))
    start.set_side_info(rng.standard_normal((n, 384)).astype(np.float32), np.ones(n), rng.integers(1, 21, n))
    batches = []
    for _ in range(args.steps):
        seq = torch.from_numpy(rng.integers(1, n + 1, (b, length)))
        seq[: b // 4, : length // 2] = 0  # a quarter of the users with short, left-padded histories
        target = torch.from_numpy(rng.integers(1, n + 1, (b, length)))
        batches.append((seq, target, (seq > 0).float(), torch.rand(b, 21)))

    def run(name: str) -> tuple[float, list[float], float]:
        model = copy.deepcopy(start)
        torch.manual_seed(1)  # the same dropout masks for both losses
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fn, seen, positions = IMPLS[name], [], 0.0
        t0 = time.perf_counter()
        for seq, target, weight, interest in batches:
            items = model.item_vectors()
            h = model.hidden(seq, interest, items)
            sel = weight > 0
            loss = fn(h[sel], items[1:], target[sel] - 1, weight[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen.append(float(loss.detach()))
            positions += float(weight.sum())
        return time.perf_counter() - t0, seen, positions

    run("blocked"), run("reference")  # warm-up: allocator, thread pools, MKL
    rows, diffs = [], []
    for r in range(args.rounds):
        got = {}
        for name in IMPLS:
            wall, seen, positions = run(name)
            got[name] = seen
            rows.append({"round": r, "loss": name, "ms_per_step": 1000 * wall / args.steps,
                         "positions_per_s": positions / wall})
            print(f"round {r} {name:9s}: {rows[-1]['ms_per_step']:7.1f} ms/step, "
                  f"{rows[-1]['positions_per_s']:9,.0f} positions/s")
        diffs.append(max(abs(a - c) / abs(c) for a, c in zip(got["blocked"], got["reference"])))
    mean = {name: float(np.mean([x["positions_per_s"] for x in rows if x["loss"] == name])) for name in IMPLS}
    ratio = mean["blocked"] / mean["reference"]
    print(f"blocked / reference positions/s: {ratio:.2f}x; largest relative loss difference over "
          f"{args.steps} steps: {max(diffs):.1e}")
    result = {"items": n, "batch": b, "seq_len": length, "steps": args.steps, "threads": threads,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows,
              "mean_positions_per_s": mean, "ratio_blocked_to_reference": ratio,
              "max_relative_loss_difference": max(diffs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
