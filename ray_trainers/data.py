"""Tonight's training sequences for Ray Train: the Parquet files of one pinned Delta snapshot -> Dataset of train rows.

A small snapshot is read by the driver (pyarrow) and handed to Ray as in-memory blocks: a Ray Data read spends
10-25 s starting read tasks on a small node even for a few kilobytes. A large one is read by Ray Data tasks in
parallel, as the cluster is sized for. Both resolve URIs with pyarrow: pass them as ``Lakehouse.pyarrow_uri``
gives them (``s3a://`` -> ``s3://``).
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


def _paths(files: list[str]):
    """``(pyarrow filesystem, paths inside it)`` for URIs of one table, resolving the filesystem once (on S3 each
    resolution asks for the bucket's region) where a URI's scheme and authority prefix the others'."""
    from pyarrow import fs as pafs

    filesystem, first = pafs.FileSystem.from_uri(files[0])
    prefix = files[0][: len(files[0]) - len(first)] if files[0].endswith(first) else None
    paths = [first]
    for f in files[1:]:
        paths.append(f[len(prefix):] if prefix is not None and f.startswith(prefix) else pafs.FileSystem.from_uri(f)[1])
    return filesystem, paths


def read_training_sequences_in_driver(files: list[str], blocks: int = 1):
    """The same rows as :func:`read_training_sequences`, read here with pyarrow into ``blocks`` in-memory blocks
    (one per training worker). URIs as pyarrow knows them (``Lakehouse.pyarrow_uri``). Needs ``ray.init()``."""
    import pyarrow.dataset as pds
    import ray

    if not files:
        raise ValueError("no training sequence files to read")
    quiet_progress()
    filesystem, paths = _paths(files)
    table = pds.dataset(paths, filesystem=filesystem, format="parquet").to_table(
        columns=SEQUENCE_COLUMNS, filter=pds.field("split") == "train")
    return ray.data.from_arrow(table, override_num_blocks=max(1, int(blocks)))


def training_dataset(files: list[str], total_bytes: int, driver_read_max_bytes: int, workers: int,
                     materialize: bool = True):
    """The train rows of ``files`` (``total_bytes`` on storage): read by the driver when ``0 < total_bytes <=
    driver_read_max_bytes``, else by Ray Data tasks (a limit of 0, or a size not known, means Ray Data)."""
    if files and 0 < total_bytes <= driver_read_max_bytes:
        log.info("training sequences: %d bytes in %d file(s), read by the driver", total_bytes, len(files))
        return read_training_sequences_in_driver(files, workers)
    return read_training_sequences(files, materialize)
