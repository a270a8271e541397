"""One run per lakehouse at a time: the lock nightly and forget-user hold while they write.

Acquiring must decide the holder in one atomic step, with the owner known, on every store the lakehouse may live
on. Two mechanisms, by the root:

- **Local roots** (a plain path or ``file://``): an exclusive ``flock`` on ``<root>/_pipeline/run.lock``. The kernel
  grants it to one open file at a time and drops it when the holder's process ends, however it ends, so there is no
  stale owner to judge and no pid to trust (a reused pid cannot keep a dead run's lock). The lock file is never
  deleted (a contender could otherwise lock an unlinked inode while another locks the new file). While it holds the
  lock, the holder writes its description to ``run.owner`` (a temp file renamed into place: never seen half
  written); a refusal names it, release deletes it, and one left behind tells the next holder which run was killed
  (:attr:`RunLock.taken_over`, whose ``running`` stage rows the caller marks failed). A Delta table is no lock on a
  local disk: Delta's log store there checks that the next commit file is absent and then renames onto it (Hadoop's
  local rename overwrites), exclusive within one JVM at best, so two processes can both commit the same version
  (issue 20: three processes racing 300 times had two holders in 4-7 rounds). On NFS, Linux maps ``flock`` to
  NFS byte-range locks.
- **Other roots** (``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``): a row of the small Delta table
  ``<root>/_pipeline/run_lock``; acquiring is one MERGE that inserts the owner row only when there is none (or
  replaces a stale one, named by its token). Delta commits there by a put-if-absent of the next log file, so of two
  concurrent MERGEs one commits and the other fails with a concurrency exception (the table is also
  ``delta.isolationLevel = Serializable``); the loser re-reads and finds the winner. That is atomic on HDFS, ADLS
  and GCS, and on S3 only with Delta's multi-cluster log store (``S3DynamoDBLogStore``), which concurrent writers
  need there for the tables too. A row's holder is stale when it ran on this host and its process is gone (the
  pid's start time is recorded, so a reused pid does not count as the owner), or when it ran on another host (whose
  processes cannot be checked from here) or its start time is unknown, and the row is older than
  ``pipeline.lock_stale_hours``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import uuid
from pathlib import Path

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
from pyspark.sql import SparkSession
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
LOCK_FILE, OWNER_FILE = "run.lock", "run.owner"  # under <root>/_pipeline on local roots


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
    """Whether ``pid`` is running and is the process that started at ``started`` (when both are known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    now = process_start(pid)
    return started is None or now is None or now == started


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class RunLock:
    """``with RunLock(spark, conf, run_id):`` holds the lakehouse's run lock or raises :class:`PipelineLocked`.

    After acquiring, :attr:`taken_over` is the owner (a dict of the ``run_lock`` columns) of a run that held the lock
    and never released it (killed), ``None`` otherwise. ``backend`` (``"file"`` or ``"delta"``) overrides the choice
    by root, for tests of the Delta lock on a local folder. ``spark`` is only used by the Delta lock.
    """

    def __init__(self, spark: SparkSession | None, conf: Config, run_id: str, *, stale_hours: float | None = None,
                 attempts: int = 5, backend: str | None = None):
        lake = Lakehouse.of(conf)
        self.backend = backend or ("file" if lake.is_local else "delta")
        if self.backend not in ("file", "delta"):
            raise ValueError(f"run lock backend must be 'file' or 'delta', got {backend!r}")
        self.spark = spark
        # Delta: Hadoop's own spelling of a file URI (file:/x): a path-only CREATE compares the identifier with the
        # qualified location and refuses file:///x as a different place (DELTA_AMBIGUOUS_PATHS_IN_CREATE_TABLE).
        self.path = (str(lake.local_path(lake.pipeline_dir())) if self.backend == "file"
                     else hadoop_spelling(lake.run_lock_path()))
        self.run_id = run_id
        self.stale_hours = conf.pipeline.lock_stale_hours if stale_hours is None else stale_hours
        self.attempts = attempts
        self.token = uuid.uuid4().hex
        self.taken_over: dict | None = None
        self._fd: int | None = None

    def _me(self) -> dict:
        pid = os.getpid()
        return {"lock_name": LOCK_NAME, "token": self.token, "run_id": self.run_id, "host": socket.gethostname(),
                "pid": pid, "pid_started": process_start(pid), "acquired_at": _utcnow()}

    def stale(self, owner: dict) -> bool:
        """On this host the owner's process decides (a long backfill keeps its lock); an owner on another host, or
        one whose start time is unknown (a reused pid would pass for it), holds until ``pipeline.lock_stale_hours``."""
        old = _utcnow() - owner["acquired_at"] > dt.timedelta(hours=self.stale_hours)
        if owner["host"] == socket.gethostname():
            alive = _alive(int(owner["pid"]), owner["pid_started"])
            return not alive or (old and (owner["pid_started"] is None or process_start(int(owner["pid"])) is None))
        return old

    def _describe(self, owner: dict | None) -> str:
        if owner is None:
            who = "a run whose owner is still being recorded"
        else:
            who = (f"run {owner['run_id']} (pid {owner['pid']} on {owner['host']}, since "
                   f"{owner['acquired_at']:%Y-%m-%d %H:%M:%S} UTC)")
        if self.backend == "file":
            how = (f"it is released when that process ends (the lock is a flock on "
                   f"{os.path.join(self.path, LOCK_FILE)})")
        else:
            how = (f"it is taken over once its process is gone or after {self.stale_hours:g} h "
                   f"(pipeline.lock_stale_hours), or delete its row from delta.`{self.path}`")
        return f"another nightly run is active on this lakehouse: {who}. Refusing to run concurrently; {how}"

    # ---- acquire / release
    def acquire(self) -> RunLock:
        return self._acquire_file() if self.backend == "file" else self._acquire_delta()

    def release(self) -> None:
        self._release_file() if self.backend == "file" else self._release_delta()

    def holder(self) -> dict | None:
        """The current holder's row (a dict), ``None`` when the lock is free."""
        return self._holder_file() if self.backend == "file" else self._holder_delta()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- local roots: flock
    def _owner_path(self) -> str:
        return os.path.join(self.path, OWNER_FILE)

    def _read_owner(self) -> dict | None:
        try:
            with open(self._owner_path()) as f:
                owner = json.load(f)
            owner["acquired_at"] = dt.datetime.fromisoformat(owner["acquired_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none, or not a record this module wrote
        return owner

    def _write_owner(self) -> None:
        tmp = os.path.join(self.path, f".{OWNER_FILE}.{self.token}")
        with open(tmp, "w") as f:
            json.dump(self._me(), f, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._owner_path())

    def _acquire_file(self) -> RunLock:
        if self._fd is not None:
            return self
        Path(self.path).mkdir(parents=True, exist_ok=True)
        fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PipelineLocked(self._describe(self._read_owner())) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            self.taken_over = self._read_owner()  # left by a holder that never released: its process ended
            if self.taken_over is not None:
                log.warning("run lock %s: run %s ended without releasing it", self.path, self.taken_over["run_id"])
            self._write_owner()
        except BaseException:
            self._release_file()
            raise
        return self

    def _release_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            owner = self._read_owner()
            if owner is not None and owner.get("token") == self.token:
                os.unlink(self._owner_path())
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _holder_file(self) -> dict | None:
        owner = self._read_owner()
        if owner is None or (owner["host"] == socket.gethostname()
                             and not _alive(int(owner["pid"]), owner["pid_started"])):
            return None  # a dead holder's leftover: its flock went with its process
        return owner

    # ---- other roots: a Delta table
    def _table(self) -> DeltaTable:
        if not DeltaTable.isDeltaTable(self.spark, self.path):
            try:
                (DeltaTable.createIfNotExists(self.spark).location(self.path).addColumns(RUN_LOCK.schema)
                 .property("delta.isolationLevel", "Serializable").comment(RUN_LOCK.comment).execute())
            except CONCURRENT_COMMIT:
                pass  # another contender created it first
        return DeltaTable.forPath(self.spark, self.path)

    def _holder_delta(self) -> dict | None:
        if not DeltaTable.isDeltaTable(self.spark, self.path):
            return None
        rows = self.spark.read.format("delta").load(self.path).where(F.col("lock_name") == LOCK_NAME).collect()
        return rows[0].asDict() if rows else None

    def _acquire_delta(self) -> RunLock:
        table = self._table()
        me = self.spark.createDataFrame([self._me()], RUN_LOCK.schema)
        for _ in range(self.attempts):
            owner = self._holder_delta()
            if owner is not None:
                if owner["token"] == self.token:
                    return self
                if not self.stale(owner):
                    raise PipelineLocked(self._describe(owner))
                log.warning("breaking a stale run lock %s (owner %s)", self.path, owner)
            merge = table.alias("t").merge(me.alias("s"), "t.lock_name = s.lock_name")
            if owner is not None:  # replace exactly the stale row seen, not whatever a faster contender wrote
                merge = merge.whenMatchedUpdateAll(condition=F.col("t.token") == F.lit(owner["token"]))
            try:
                merge.whenNotMatchedInsertAll().execute()
            except CONCURRENT_COMMIT:
                log.info("run lock %s: a concurrent commit won; re-reading the holder", self.path)
            seen, owner = owner, self._holder_delta()
            if owner is not None and owner["token"] == self.token:
                self.taken_over = seen
                return self
            if owner is not None and not self.stale(owner):
                raise PipelineLocked(self._describe(owner))
        raise PipelineLocked(f"could not take the run lock {self.path}: other runs kept taking it first")

    def _release_delta(self) -> None:
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
