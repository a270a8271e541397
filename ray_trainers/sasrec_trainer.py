"""Ray Train entry point for the sequential recommender: DDP over ``ScalingConfig(num_workers, use_gpu)``.

The model is any :class:`driftrec.models.protocol.SequenceModel` (``training.model``, SASRec by default): the loop
builds it with ``model_class(name).from_params``, trains its ``forward`` (the loss) and saves it through the protocol.

Training sequences arrive as a Ray Dataset (the rows of one pinned Delta snapshot, :mod:`ray_trainers.data`) and
are sharded to the workers with ``get_dataset_shard``; the item space and an optional warm-start state go through the
object store, so the same code runs under a local ``ray.init()`` and on a cluster. Gloo on CPU, NCCL + bf16 autocast on GPU (the
backend is chosen by Ray Train from ``use_gpu``). Rank 0 saves the unwrapped model with
:func:`driftrec.models.checkpoint.save_checkpoint` and reports it through ``ray.train.Checkpoint``; a restarted
worker group resumes from ``ray.train.get_checkpoint()``.

One CPU worker on a Ray this process started (``training.local_mode``) runs the same loop in this process, Ray
Train's local mode: a worker group's chain of actor processes costs ~40-50 s on a small node, whatever the data.
Local mode trains on the CPU, has no retry (``FailureConfig``) and writes nothing under ``storage_path``.

Early stopping (``training.early_stopping_patience``): given validation rows, rank 0 scores them after every epoch
(per-user NDCG@10, :func:`driftrec.models.evaluation.valid_ranks`) and keeps the latest epoch not significantly worse
than the top-scoring one (:class:`EarlyStopper`); the stop decision goes to every rank through an all-reduce, and the
final checkpoint holds the kept epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftrec.config import TrainingConfig
from driftrec.models.batches import ItemSpace
from driftrec.models.protocol import ModelParams
from ray_trainers.data import SEQUENCE_COLUMNS

__all__ = ["SEQUENCE_COLUMNS", "EarlyStopper", "FitResult", "fit", "runs_in_driver", "train_loop_per_worker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    # ray.train.Checkpoint (under storage_path; in local mode a temporary directory that lives as long as this
    # result, not its dataclasses.replace copies); publish with .to_directory(path)
    checkpoint: object
    metrics: dict
    in_driver: bool = False  # trained in this process (Ray Train local mode), not by a worker group


def runs_in_driver(tcfg: TrainingConfig) -> bool:
    """Whether :func:`fit` trains in this process: ``training.local_mode``, one CPU worker, and a Ray this process
    started (never on a cluster it joined: the loop would run on the head node, outside the placement group), not
    launched by torchrun (Ray's local mode then joins torchrun's process group)."""
    from ray_trainers.session import started_local_head

    torchrun = {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= os.environ.keys()
    return bool(tcfg.local_mode and tcfg.num_workers == 1 and not tcfg.use_gpu and not torchrun
                and started_local_head())


def torch_threads(tcfg: TrainingConfig, in_driver: bool) -> int:
    """Torch threads the training loop sets (0: leave torch's own choice, on a GPU). In the driver (local mode) the fit
    is the only work: ``training.local_mode_threads``, or every CPU of the local Ray when 0. A worker gets the CPUs it
    reserved (``training.cpus_per_worker``)."""
    if tcfg.use_gpu:
        return 0
    if in_driver:
        import ray

        return tcfg.local_mode_threads or max(int(ray.cluster_resources().get("CPU", 1)), 1)
    return max(int(tcfg.cpus_per_worker), 1)


# Ray's INFO lines that local mode prints in the driver (a worker group logs them in its own processes, off the
# console): "Running in local mode", "Moving model to device", one "Dataset ... execution finished" per epoch and
# "Reported metrics". Training prints its own line per epoch; these only repeat it.
_LOCAL_MODE_CHATTER = (
    "ray.train.v2.api.config",
    "ray.train.torch.train_loop_utils",
    "ray.train.v2.torch.train_loop_utils",
    "ray.train.v2._internal.execution.train_fn_utils",
    "ray.data._internal.execution.streaming_executor",
)


@contextlib.contextmanager
def _without_info(names: tuple[str, ...] = _LOCAL_MODE_CHATTER):
    """These loggers at WARNING for the block, then back to their own levels (their INFO lines then reach no handler,
    Ray's own log files included; training's per-epoch line says the same)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _fit_in_driver(trainer, checkpoint_dir: str):
    """``trainer.fit()`` in local mode, leaving the driver as it found it: torch's thread count and random state
    (the loop sets both), and no Ray Train context (Ray keeps the last one, holding the dataset and checkpoint);
    the checkpoint directory is removed if the fit fails."""
    import torch

    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]), _without_info():
            return trainer.fit()
    except BaseException:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
        try:  # private: Ray 2.60 has no public way to drop the local-mode context
            from ray.train.v2._internal.execution.train_fn_utils import set_train_fn_utils

            set_train_fn_utils(None)
        except ImportError:
            pass


def _all_reduce(value: float, world: int, op: str) -> float:
    """``value`` reduced over the worker group (``op``: "MIN" or "SUM"); a plain pass-through for one worker."""
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return float(t.item())


class EarlyStopper:
    """Patience on per-user validation gains (higher is better) that keeps the latest epoch the evidence allows.

    Validation NDCG@10 over a few hundred held-out items moves by more between epochs than training changes it
    (on ml-latest-small, 610 users, the per-epoch standard error is ~0.004 on a mean of ~0.02). Keeping the epoch of
    the highest mean keeps the luckiest draw, usually an early, less trained one: on ml-latest-small that cost a
    sixth of the test NDCG against simply keeping the last of 10 epochs (sasrec_text 0.0304 vs 0.0360, 3 seeds).

    So each epoch is compared with the top-scoring epoch so far, user by user (the same users every epoch, so the
    comparison is paired): it is *significantly worse* when the mean of (top - this) exceeds ``margin_se`` standard
    errors of that difference. An epoch that is not significantly worse becomes the kept one (later epochs are
    preferred: more trained, and the gap is noise); ``patience`` significantly worse epochs in a row stop training,
    and the kept epoch's weights are the result. Compared with the top epoch, not the kept one, so a slow decline
    cannot creep through one insignificant step at a time. ``patience`` 0 never stops. A plain float score (no
    per-user gains) has no standard error: then only a strictly lower score is worse. A NaN is always worse.
    The kept weights are copied to CPU: on a GPU a second copy of the model would take device memory from training.
    """

    def __init__(self, patience: int, margin_se: float = 2.0):
        self.patience, self.margin_se = patience, margin_se
        self.best_score = float("-inf")  # the kept epoch's mean (the name the metrics and progress lines use)
        self.best_epoch: int | None = None  # the kept epoch
        self.best_state: dict | None = None
        self.top_score = float("-inf")
        self._top_gains: np.ndarray | None = None
        self.stale = 0  # significantly worse epochs in a row

    def _worse_than_top(self, gains: np.ndarray, score: float) -> bool:
        if not np.isfinite(score):
            return True
        if self._top_gains is None:
            return False
        if len(gains) != len(self._top_gains) or len(gains) < 2:
            return score < self.top_score
        diff = self._top_gains - gains
        return float(diff.mean()) > self.margin_se * float(diff.std(ddof=1)) / np.sqrt(len(diff))

    def update(self, epoch: int, score, model) -> bool:
        """Record ``epoch``'s per-user gains (an array; its mean is the score) or a plain float score, keeping
        ``model``'s weights when the epoch is kept; True: stop now."""
        gains = np.atleast_1d(np.asarray(score, np.float64))
        mean = float(gains.mean()) if gains.size else float("nan")
        if self._worse_than_top(gains, mean):
            self.stale += 1
        else:
            self.best_score, self.best_epoch, self.stale = mean, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if mean > self.top_score:
                self.top_score, self._top_gains = mean, gains
        return 0 < self.patience <= self.stale


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from driftrec.models.batches import train_batch
    from driftrec.models.checkpoint import load_checkpoint, save_checkpoint
    from driftrec.models.evaluation import ndcg_gains, valid_ranks
    from driftrec.models.protocol import model_class

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    if config.get("torch_threads"):
        torch.set_num_threads(config["torch_threads"])
    space: ItemSpace = ray.get(config["space_ref"])
    model = model_class(config["model"]).from_params(config["params"])
    params = model.p
    model.set_side_info(space.text, space.has_text, space.item_category)
    start_epoch = 0
    resume = ray.train.get_checkpoint()
    if resume is not None:  # worker group restarted after a failure: continue this run
        with resume.as_directory() as d:
            restored, _, meta = load_checkpoint(d)
        model.load_state_dict(restored.state_dict())
        # The final checkpoint (it names its best epoch) ends the run even when early stopping ended it before
        # config["epochs"]: its weights are the best epoch's, not a place to train on from.
        start_epoch = config["epochs"] if "best_epoch" in meta else int(meta.get("epoch", -1)) + 1
    elif config.get("init_ref") is not None:  # nightly warm start (already grown to tonight's items)
        model.load_state_dict(ray.get(config["init_ref"]))

    # Local mode (in the driver) is for one CPU worker: Ray's device there is any GPU torch can see.
    device = torch.device("cpu") if config.get("checkpoint_dir") else ray.train.torch.get_device()
    # The frozen text table is a buffer identical on every rank: synced once at init, never per step.
    ddp = ray.train.torch.prepare_model(model, move_to_device=device,
                                        parallel_strategy_kwargs={"forward_sync_buffers": False})
    core = ddp.module if hasattr(ddp, "module") else ddp
    amp = device.type == "cuda" and config["mixed_precision"]
    opt = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=config["lr"],
                            weight_decay=config["weight_decay"])

    shard = ray.train.get_dataset_shard("train")
    index, cindex = space.index(), space.category_index()
    n_cats, max_len = params.n_categories, params.max_seq_len
    sampled = config["num_negatives"] if config["loss"] == "sampled" else 0
    rates: list[float] = []
    # Early stopping: only rank 0 holds the validation rows and scores them; every rank runs the loop's all-reduce.
    # A resumed run starts counting patience afresh from the restored weights.
    early = config.get("valid_ref") is not None
    valid: pd.DataFrame | None = ray.get(config["valid_ref"]) if early and rank == 0 else None
    stopper = EarlyStopper(config["patience"], config.get("margin_se", 2.0)) if early else None
    # Progress: one line per epoch from rank 0, forwarded to the driver's console by Ray. A bar (Ray's tqdm) was
    # left open on the driver after training ended and kept re-rendering with a growing elapsed time.
    started = time.perf_counter()
    for epoch in range(start_epoch, config["epochs"]):
        ddp.train()
        t0, positions, loss_sum, steps = time.perf_counter(), 0.0, 0.0, 0
        batches = iter(shard.iter_batches(batch_size=config["batch_size"], batch_format="pandas",
                                          local_shuffle_buffer_size=4 * config["batch_size"],
                                          local_shuffle_seed=config["seed"] + epoch))
        while True:
            pdf = next(batches, None)
            # Every rank must take the same number of steps, or DDP's all-reduce waits forever.
            if _all_reduce(0 if pdf is None or len(pdf) == 0 else 1, world, "MIN") == 0:
                break
            b = train_batch(pdf, index, cindex, n_cats, max_len, config["window_start"])
            t = {k: torch.as_tensor(v).to(device) for k, v in b.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                # SequenceModel.forward is the loss: DDP syncs gradients through forward.
                loss = ddp(t["seq"], t["target"], t["weight"], t["interest"], sampled)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            positions += float(b["weight"].sum())
            loss_sum += float(loss.detach())
            steps += 1
        elapsed = time.perf_counter() - t0
        total_positions = _all_reduce(positions, world, "SUM")
        rates.append(total_positions / max(_all_reduce(elapsed, world, "SUM") / world, 1e-9))
        metrics = {
            "epoch": epoch,
            "loss": loss_sum / max(steps, 1),
            "samples": total_positions,
            "samples_per_s": rates[-1],
            # the first epoch pays for process start-up and data loading; later ones show steady state
            "steady_samples_per_s": float(np.mean(rates[1:])) if len(rates) > 1 else rates[-1],
            "world_size": world,
            "torch_threads": torch.get_num_threads(),
        }
        stop, scored = False, ""
        if stopper is not None:
            if rank == 0:
                gains = ndcg_gains(valid_ranks(core, space, valid, device=device), 10)  # eval mode, no_grad
                core.train()
                stop = stopper.update(epoch, gains, core)
                ndcg = float(gains.mean())
                metrics["valid_ndcg_at_10"] = ndcg
                scored = (f", valid NDCG@10 {ndcg:.4f} (kept: epoch {stopper.best_epoch + 1}, "
                          f"{stopper.best_score:.4f}; top {stopper.top_score:.4f})")
            # Every rank must run the same epochs (DDP again): rank 0's decision reaches the others here.
            stop = _all_reduce(1.0 if stop else 0.0, world, "SUM") > 0
        if rank == 0:  # not print(): Ray Train patches it into a root-logger call that reaches the console twice
            sys.__stdout__.write(f"[driftrec train] epoch {epoch + 1}/{config['epochs']} on {world} worker(s): loss "
                                 f"{metrics['loss']:.3f}{scored}, {rates[-1]:,.0f} positions/s, {elapsed:.1f} s "
                                 f"({time.perf_counter() - started:.0f} s in all)\n")
            if stop:
                sys.__stdout__.write(f"[driftrec train] early stop after epoch {epoch + 1} ({stopper.stale} "
                                     f"significantly worse in a row): keeping epoch {stopper.best_epoch + 1}, "
                                     f"NDCG@10 {stopper.best_score:.4f}\n")
            sys.__stdout__.flush()
        last = stop or epoch == config["epochs"] - 1
        # Reports synchronise every worker with the controller: only at checkpoints, not every epoch.
        if last or (epoch + 1) % config["checkpoint_every"] == 0:
            extra = {}
            if last:  # epochs 1-based, as the progress lines count them; best_epoch: the one the checkpoint holds
                extra = {"epochs_run": epoch + 1, "best_epoch": epoch + 1}
                # Rank 0 knows the best epoch (there is one: NDCG of a non-empty set is never NaN); all report it.
                if stopper is not None:
                    best = _all_reduce(stopper.best_epoch + 1.0 if rank == 0 else 0.0, world, "SUM")
                    score = _all_reduce(stopper.best_score if rank == 0 else 0.0, world, "SUM")
                    extra.update(best_epoch=int(best), valid_ndcg_at_10_best=score)
                    if rank == 0:
                        core.load_state_dict(stopper.best_state)
                metrics.update(extra)
            if rank == 0 and config.get("checkpoint_dir"):  # local mode: report() keeps only the object
                kept = os.path.join(config["checkpoint_dir"], f"epoch_{epoch:06d}")
                save_checkpoint(kept, core, space, {"epoch": epoch, **extra, **config["meta"]})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(kept))
            elif rank == 0:  # a worker group: report() persists the directory under storage_path
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(tmp, core, space, {"epoch": epoch, **extra, **config["meta"]})
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        if stop:
            break


def fit(
    train_ds,
    space: ItemSpace,
    params: ModelParams,
    tcfg: TrainingConfig,
    *,
    model: str | None = None,
    storage_path: str,
    run_name: str,
    init_state: dict | None = None,
    window_start: int = 0,
    epochs: int | None = None,
    meta: dict | None = None,
    valid: pd.DataFrame | None = None,
) -> FitResult:
    """Train a ``model`` (default ``training.model``) with ``params`` on ``train_ds`` (``SEQUENCE_COLUMNS`` of
    training_sequences rows, :func:`ray_trainers.data.training_dataset`) with a TorchTrainer.

    ``epochs`` (default ``training.epochs``) is the most that run: with ``valid`` rows (split 'valid') and
    ``training.early_stopping_patience`` > 0 training stops early and the checkpoint holds the best epoch; the
    metrics then carry ``valid_ndcg_at_10_best``, and always ``best_epoch`` and ``epochs_run`` (1-based).

    One CPU worker on a Ray this process started trains here, in Ray Train's local mode (:func:`runs_in_driver`);
    anything else gets a worker group. Needs ``ray.init()`` done. On a node whose CPUs all go to training workers,
    pass a materialized dataset with no pending operators: Ray Data gets no CPU there to run them.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    n_epochs = epochs or tcfg.epochs
    in_driver = runs_in_driver(tcfg)
    config = {
        "space_ref": ray.put(space),
        "init_ref": ray.put(init_state) if init_state is not None else None,
        "model": model or tcfg.model,
        "params": params.to_dict(),
        "seed": tcfg.seed,
        "lr": tcfg.lr,
        "weight_decay": tcfg.weight_decay,
        "batch_size": tcfg.batch_size,
        "epochs": n_epochs,
        "loss": tcfg.loss,
        "num_negatives": tcfg.num_negatives,
        "mixed_precision": tcfg.mixed_precision,
        "window_start": int(window_start),
        "checkpoint_every": max(n_epochs, 1),
        "torch_threads": torch_threads(tcfg, in_driver),
        "meta": meta or {},
        # No rows (or patience 0): nothing to score, every epoch runs and the last one is kept.
        "valid_ref": ray.put(valid) if valid is not None and len(valid) and tcfg.early_stopping_patience else None,
        "patience": tcfg.early_stopping_patience,
        "margin_se": tcfg.early_stopping_margin_se,
    }
    resources = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        resources["GPU"] = 1
    if in_driver:
        with _without_info():  # its constructor logs "Running in local mode"
            scaling = ScalingConfig(num_workers=0)
        log.info("training %s in this process (Ray Train local mode: one CPU worker on a Ray this process started;"
                 " no retries, nothing under storage_path)", run_name)
    else:
        scaling = ScalingConfig(num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu, resources_per_worker=resources)
    if in_driver:  # made last: nothing between here and the fit's own cleanup can fail
        config["checkpoint_dir"] = tempfile.mkdtemp(prefix=f"driftrec-{run_name}-")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=scaling,
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=1),
        ),
        datasets={"train": train_ds},
    )
    result = _fit_in_driver(trainer, config["checkpoint_dir"]) if in_driver else trainer.fit()
    if result.checkpoint is None:
        if in_driver:
            shutil.rmtree(config["checkpoint_dir"], ignore_errors=True)
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    fitted = FitResult(checkpoint=result.checkpoint, metrics=dict(result.metrics or {}), in_driver=in_driver)
    if in_driver:
        weakref.finalize(fitted, shutil.rmtree, config["checkpoint_dir"], True)
    return fitted
