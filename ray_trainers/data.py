"""Tonight's training sequences for Ray Train: the Parquet files of one pinned Delta snapshot -> a Dataset of train rows.

A small snapshot is read by the driver (pyarrow) and handed to Ray as in-memory blocks: a Ray Data read spends
10-25 s starting read tasks on a small node even for a few kilobytes. A large one is read by Ray Data tasks in
parallel, as the cluster is sized for.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

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


def read_training_sequences_in_driver(files: list[str], blocks: int = 1):
    """The same rows as :func:`read_training_sequences`, read here with pyarrow and split into ``blocks`` in-memory
    blocks (one per training worker, so the split hands each its share without a repartition). Needs ``ray.init()``.
    """
    import pyarrow.dataset as pds
    import ray
    from pyarrow import fs as pafs

    if not files:
        raise ValueError("no training sequence files to read")
    quiet_progress()
    filesystem, first = pafs.FileSystem.from_uri(files[0])
    paths = [first] + [pafs.FileSystem.from_uri(f)[1] for f in files[1:]]
    table = pds.dataset(paths, filesystem=filesystem, format="parquet").to_table(
        columns=SEQUENCE_COLUMNS, filter=pds.field("split") == "train")
    n = max(1, min(int(blocks), table.num_rows))
    step = -(-table.num_rows // n)
    return ray.data.from_arrow([table.slice(i * step, step) for i in range(n)])


def driver_can_open(uri: str) -> bool:
    """Whether pyarrow opens ``uri``'s filesystem here (local paths, ``file://``, ``s3://``, ``gs://``, ``hdfs://``
    and whatever this pyarrow build has); a scheme it does not know (``s3a://``) goes to the Ray Data read."""
    import pyarrow as pa
    from pyarrow import fs as pafs

    try:
        pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        log.info("training sequences at %s: pyarrow cannot open it here (%s); Ray Data reads them", uri, e)
        return False
    return True


def training_dataset(files: list[str], total_bytes: int, driver_read_max_bytes: int, workers: int,
                     materialize: bool = True):
    """The train rows of ``files`` (``total_bytes`` on storage): read by the driver up to ``driver_read_max_bytes``
    when pyarrow can open them, else by Ray Data tasks."""
    if files and total_bytes <= driver_read_max_bytes and driver_can_open(files[0]):
        return read_training_sequences_in_driver(files, workers)
    return read_training_sequences(files, materialize)
