"""One run per lakehouse at a time: the lock nightly and forget-user hold while they write.

Why a Delta table: acquiring must be atomic with the owner recorded in the same step, on every store the lakehouse
may live on. A lock file created with ``O_EXCL`` is neither (object stores have no ``O_EXCL``; and an owner written
after the create leaves a moment where a live holder's empty file looks stale, which let two processes in). Here
the lock is a row of a small Delta table at ``<root>/_pipeline/run_lock``; acquiring is one MERGE that inserts the
owner row only when there is none (or replaces a stale one, named by its token). Delta commits by a put-if-absent
of the next log file through its LogStore, so of two concurrent MERGEs one commits and the other fails with a
concurrency exception (the table is also ``delta.isolationLevel = Serializable``); the loser re-reads and finds the
winner. The lock is therefore exactly as safe as the Delta tables it guards: atomic on local disks, HDFS, ADLS and
GCS; on S3 only with Delta's multi-cluster log store (``S3DynamoDBLogStore``), which concurrent writers need there
for the tables too.

A holder is stale when it ran on this host and its process is gone, or it ran on another host (whose processes
cannot be checked from here) and its row is older than ``pipeline.lock_stale_hours`` (the pid's start time is recorded too, so a reused pid does not keep a dead run's lock alive).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid

from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    MetadataChangedException,
    ProtocolChangedException,
)
from delta.tables import DeltaTable
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from driftrec.config import Config
from driftrec.lakehouse import Lakehouse, hadoop_spelling
from driftrec.tables import RUN_LOCK

log = logging.getLogger("driftrec.runlock")

# Delta's commit conflicts: another writer committed first. Anything else is a real error and propagates.
CONCURRENT_COMMIT = (
    ConcurrentAppendException,
    ConcurrentDeleteReadException,
    ConcurrentDeleteDeleteException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    MetadataChangedException,
    ProtocolChangedException,
)
LOCK_NAME = "pipeline"


class PipelineLocked(RuntimeError):
    """Another run holds this lakehouse."""


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``); ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    now = process_start(pid)
    return started is None or now is None or now == started


class RunLock:
    """``with RunLock(spark, conf, run_id):`` holds the lakehouse's run lock or raises :class:`PipelineLocked`."""

    def __init__(self, spark: SparkSession, conf: Config, run_id: str, *, stale_hours: float | None = None,
                 attempts: int = 5):
        self.spark = spark
        # Hadoop's own spelling of a file URI (file:/x): a path-only CREATE compares the identifier with the
        # qualified location and refuses file:///x as a different place (DELTA_AMBIGUOUS_PATHS_IN_CREATE_TABLE).
        self.path = hadoop_spelling(Lakehouse.of(conf).run_lock_path())
        self.run_id = run_id
        self.stale_hours = conf.pipeline.lock_stale_hours if stale_hours is None else stale_hours
        self.attempts = attempts
        self.token = uuid.uuid4().hex

    # ---- the table
    def _table(self) -> DeltaTable:
        if not DeltaTable.isDeltaTable(self.spark, self.path):
            try:
                (DeltaTable.createIfNotExists(self.spark).location(self.path).addColumns(RUN_LOCK.schema)
                 .property("delta.isolationLevel", "Serializable").comment(RUN_LOCK.comment).execute())
            except CONCURRENT_COMMIT:
                pass  # another contender created it first
        return DeltaTable.forPath(self.spark, self.path)

    def holder(self) -> Row | None:
        """The current holder's row, ``None`` when the lock is free."""
        if not DeltaTable.isDeltaTable(self.spark, self.path):
            return None
        rows = self.spark.read.format("delta").load(self.path).where(F.col("lock_name") == LOCK_NAME).collect()
        return rows[0] if rows else None

    def stale(self, owner: Row) -> bool:
        """On this host the owner's process decides (a long backfill keeps its lock); an owner on another host
        cannot be checked from here, so it holds until ``pipeline.lock_stale_hours``."""
        if owner["host"] == socket.gethostname():
            return not _alive(int(owner["pid"]), owner["pid_started"])
        age = dt.datetime.now(dt.UTC).replace(tzinfo=None) - owner["acquired_at"]
        return age > dt.timedelta(hours=self.stale_hours)

    def _describe(self, owner: Row) -> str:
        return (f"another nightly run is active on this lakehouse: run {owner['run_id']} (pid {owner['pid']} on "
                f"{owner['host']}, since {owner['acquired_at']:%Y-%m-%d %H:%M:%S} UTC). Refusing to run "
                f"concurrently; it is taken over once its process is gone or after {self.stale_hours:g} h "
                f"(pipeline.lock_stale_hours), or delete its row from delta.`{self.path}`")

    # ---- acquire / release
    def acquire(self) -> RunLock:
        table = self._table()
        pid = os.getpid()
        me = self.spark.createDataFrame(
            [(LOCK_NAME, self.token, self.run_id, socket.gethostname(), pid, process_start(pid),
              dt.datetime.now(dt.UTC).replace(tzinfo=None))],
            RUN_LOCK.schema,
        )
        for _ in range(self.attempts):
            owner = self.holder()
            if owner is not None:
                if owner["token"] == self.token:
                    return self
                if not self.stale(owner):
                    raise PipelineLocked(self._describe(owner))
                log.warning("breaking a stale run lock %s (owner %s)", self.path, owner.asDict())
            merge = table.alias("t").merge(me.alias("s"), "t.lock_name = s.lock_name")
            if owner is not None:  # replace exactly the stale row seen, not whatever a faster contender wrote
                merge = merge.whenMatchedUpdateAll(condition=f"t.token = '{owner['token']}'")
            try:
                merge.whenNotMatchedInsertAll().execute()
            except CONCURRENT_COMMIT:
                log.info("run lock %s: a concurrent commit won; re-reading the holder", self.path)
            owner = self.holder()
            if owner is not None and owner["token"] == self.token:
                return self
            if owner is not None and not self.stale(owner):
                raise PipelineLocked(self._describe(owner))
        raise PipelineLocked(f"could not take the run lock {self.path}: other runs kept taking it first")

    def release(self) -> None:
        """Delete our row (only ours: a stale-lock takeover by another run is left alone)."""
        for _ in range(self.attempts):
            try:
                DeltaTable.forPath(self.spark, self.path).delete(
                    (F.col("lock_name") == LOCK_NAME) & (F.col("token") == self.token))
                return
            except CONCURRENT_COMMIT:
                continue
        log.error("could not release the run lock %s (token %s) after %d attempts", self.path, self.token,
                  self.attempts)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
