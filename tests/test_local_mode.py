"""Ray Train's local mode: one CPU worker on a Ray this process started trains in the driver, with the weights a
worker group gives, and nothing else does (several workers, a GPU, a joined cluster, the switch off)."""

from __future__ import annotations

import gc
import logging
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from driftrec.config import TrainingConfig
from driftrec.models.batches import extend_space
from driftrec.models.checkpoint import load_checkpoint
from driftrec.models.sasrec import SASRecParams

pytestmark = pytest.mark.slow  # a real Ray Train worker group beside the local mode; skip with -m "not slow"


def _rows(users: int, items: int, max_len: int, seed: int = 3) -> pd.DataFrame:
    """training_sequences-like rows: each user walks a category's items with a step of 1 or 2 (learnable)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start, n = int(rng.integers(0, items)), int(rng.integers(4, max_len + 1))
        seq = [(start + k * (1 + u % 2)) % items + 1 for k in range(n)]
        rows.append({"user_id": u, "chunk": 0, "item_ids": seq, "event_ts": [1_000 * k for k in range(n)],
                     "interest_categories": [], "interest_p": []})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from ray_trainers.session import ensure_ray

    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _space_and_params(items: int, tcfg: TrainingConfig):
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(items, 16))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    side = pd.DataFrame({"item_id": np.arange(1, items + 1), "category": [f"c{i % 3}" for i in range(items)],
                         "embedding": list(unit.astype(np.float32))})
    space = extend_space(np.zeros(0, np.int64), [], side, 16)
    params = SASRecParams(n_items=space.n_items, n_categories=len(space.categories), text_dim=16,
                          max_seq_len=tcfg.max_seq_len, d_model=tcfg.d_model, heads=tcfg.heads, layers=tcfg.layers,
                          dropout=tcfg.dropout, use_text=True)
    return space, params


def test_runs_in_driver_only_for_one_cpu_worker_on_a_ray_this_process_started(local_ray):
    from ray_trainers.sasrec_trainer import runs_in_driver
    from ray_trainers.session import started_local_head

    assert started_local_head()
    assert runs_in_driver(TrainingConfig())  # the default: one CPU worker, local_mode on
    assert not runs_in_driver(TrainingConfig(local_mode=False))
    assert not runs_in_driver(TrainingConfig(num_workers=2))
    assert not runs_in_driver(TrainingConfig(use_gpu=True))


def test_torch_threads_of_a_fit(local_ray):
    from ray_trainers.sasrec_trainer import torch_threads

    # In the driver the fit is the only work: every CPU of the local Ray (2 here), or what local_mode_threads says.
    assert torch_threads(TrainingConfig(), in_driver=True) == 2
    assert torch_threads(TrainingConfig(local_mode_threads=3), in_driver=True) == 3
    # A worker uses the CPUs it reserved; on a GPU torch keeps its own choice (0: not set).
    assert torch_threads(TrainingConfig(cpus_per_worker=1), in_driver=False) == 1
    assert torch_threads(TrainingConfig(cpus_per_worker=4, local_mode_threads=3), in_driver=False) == 4
    assert torch_threads(TrainingConfig(use_gpu=True), in_driver=False) == 0


def test_local_mode_trains_in_the_driver_with_the_weights_of_a_one_worker_group(local_ray, tmp_path):
    import ray
    import ray.train
    import torch

    from ray_trainers.sasrec_trainer import _LOCAL_MODE_CHATTER, fit

    class Heard(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    chatter = [logging.getLogger(n) for n in _LOCAL_MODE_CHATTER]
    levels, heard = [lg.level for lg in chatter], Heard()
    # Heard where Ray's records end up ("ray.data" does not propagate to "ray"), so a renamed logger still shows.
    listening = [logging.getLogger("ray"), logging.getLogger("ray.data")]
    base = dict(d_model=16, heads=2, layers=1, max_seq_len=10, epochs=3, batch_size=16, lr=0.01, seed=11)
    rows = _rows(users=90, items=30, max_len=10)
    ds = ray.data.from_arrow(pa.Table.from_pandas(rows, preserve_index=False), override_num_blocks=1)
    fitted, states, driver = {}, {}, {}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # not the loop's 2 (this Ray's CPUs, the group's cpus_per_worker): the restore shows
        for lg in listening:
            lg.addHandler(heard)
        for label, local in (("group", False), ("local", True)):
            # local_mode_threads left at 0: the local fit takes the Ray's 2 CPUs, as the group's worker reserves 2;
            # its cpus_per_worker of 1 would give 1 thread if the fit in the driver went by it.
            tcfg = TrainingConfig(local_mode=local, cpus_per_worker=1 if local else 2, **base)
            space, params = _space_and_params(30, tcfg)
            rng = torch.random.get_rng_state()
            fitted[label] = fit(ds, space, params, tcfg, storage_path=str(tmp_path / "ray"), run_name=f"lm-{label}")
            driver[label] = (torch.get_num_threads(), torch.equal(torch.random.get_rng_state(), rng))
            model, _, meta = load_checkpoint(fitted[label].checkpoint.to_directory(str(tmp_path / label)))
            states[label] = model.state_dict()
            assert meta["epoch"] == 2 and meta["epochs_run"] == 3, label
    finally:
        torch.set_num_threads(threads)
        for lg in listening:
            lg.removeHandler(heard)
    # Ray's per-run INFO lines stay out of the driver's console in local mode (a group logs them in its workers),
    # and the loggers get their own levels back.
    assert not [m for m in heard.messages if "Reported metrics" in m or "local mode" in m or "finished" in m]
    assert [lg.level for lg in chatter] == levels
    assert (fitted["group"].in_driver, fitted["local"].in_driver) == (False, True)
    # The driver gets back its thread count and random state (the loop sets both), and keeps no Ray Train context.
    assert driver == {"group": (1, True), "local": (1, True)}
    assert fitted["group"].metrics["torch_threads"] == fitted["local"].metrics["torch_threads"] == 2
    with pytest.raises(RuntimeError):
        ray.train.get_context()
    # A worker group persists its checkpoint under storage_path; local mode writes nothing there.
    assert (tmp_path / "ray" / "lm-group").is_dir() and not (tmp_path / "ray" / "lm-local").exists()
    # Same rows, same seed, same order: the same weights, bit for bit.
    assert states["group"].keys() == states["local"].keys()
    for k in states["group"]:
        assert torch.equal(states["group"][k], states["local"][k]), k
    for key in ("loss", "samples", "epochs_run", "best_epoch", "world_size"):
        assert fitted["group"].metrics[key] == fitted["local"].metrics[key], key
    assert fitted["local"].metrics["samples"] > 0
    # The local run's checkpoint directory lives as long as its result, and no longer.
    kept = fitted["local"].checkpoint.path
    assert os.path.isdir(kept)
    del fitted["local"]
    gc.collect()
    assert not os.path.exists(kept)
