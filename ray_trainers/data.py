"""The Ray Data read of tonight's training sequences: the Parquet files of one pinned Delta snapshot -> train rows."""

from __future__ import annotations

SEQUENCE_COLUMNS = ["user_id", "chunk", "item_ids", "event_ts", "interest_categories", "interest_p"]


def read_training_sequences(files: list[str], materialize: bool = True):
    """A Ray Dataset of the ``split == "train"`` rows of ``files``, ``SEQUENCE_COLUMNS`` only. Needs ``ray.init()``.

    ``materialize``: read before the training workers take their CPUs; on a small node Ray Data would otherwise get
    none and the streaming split would wait forever.
    """
    import ray

    if not files:
        raise ValueError("no training sequence files to read")
    cols = SEQUENCE_COLUMNS
    ds = ray.data.read_parquet(files).map_batches(lambda df: df.loc[df["split"] == "train", cols],
                                                  batch_format="pandas")
    return ds.materialize() if materialize else ds
