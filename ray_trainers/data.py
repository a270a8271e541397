"""The Ray Data read of tonight's training sequences: the Parquet files of one pinned Delta snapshot -> train rows."""

from __future__ import annotations

SEQUENCE_COLUMNS = ["user_id", "chunk", "item_ids", "event_ts", "interest_categories", "interest_p"]


def quiet_progress() -> None:
    """No Ray Data progress bars: the workers' bars reach the driver as forwarded log lines (about 140 per
    evaluation run, re-rendered after 100%), never redrawn in place; the trainer's one line per epoch says how far
    training is. The setting travels with the datasets this driver builds."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False


def read_training_sequences(files: list[str], materialize: bool = True):
    """A Ray Dataset of the ``split == "train"`` rows of ``files``, ``SEQUENCE_COLUMNS`` only. Needs ``ray.init()``.

    ``materialize``: read before the training workers take their CPUs; on a small node Ray Data would otherwise get
    none and the streaming split would wait forever.
    """
    import ray

    if not files:
        raise ValueError("no training sequence files to read")
    quiet_progress()
    cols = SEQUENCE_COLUMNS
    ds = ray.data.read_parquet(files).map_batches(lambda df: df.loc[df["split"] == "train", cols],
                                                  batch_format="pandas")
    return ds.materialize() if materialize else ds
