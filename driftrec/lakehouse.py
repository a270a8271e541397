"""Delta I/O: create and register tables, MERGE keyed state, replace one partition; :class:`Lakehouse` owns the root.

Everything that touches storage goes through here so the transforms elsewhere stay pure DataFrame functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from driftrec import sqltext
from driftrec.config import Config
from driftrec.tables import ALL_TABLES, TableSpec, conform

log = logging.getLogger(__name__)


# ---- the root and every path under it --------------------------------------------------------------------------
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Hadoop scheme -> the scheme pyarrow (and Ray, which uses pyarrow) knows the same store by.
_PYARROW_SCHEMES = {"s3a": "s3", "s3n": "s3", "abfss": "abfs", "gcs": "gs"}


def _scheme(uri: str) -> str | None:
    """The URI scheme of ``uri`` (lower case), ``None`` for a plain local path (``C:\\x`` included)."""
    m = _SCHEME.match(uri)
    if m is None or (len(m.group(1)) == 1 and not uri.startswith(m.group(0) + "//")):
        return None
    return m.group(1).lower()


def normalize_root(root: str) -> str:
    """A root as every path is built from: URIs kept as they are, plain local paths made absolute.

    ``file:/x`` (Hadoop's spelling) becomes ``file:///x``. Only a plain local path goes through pathlib: a URI never
    does, since ``Path("s3a://b/p")`` collapses it to ``s3a:/b/p`` (and ``resolve()`` glues the cwd in front).
    """
    root = str(root).strip()
    if not root:
        raise ValueError("lakehouse.root is empty")
    scheme = _scheme(root)
    if scheme is None:
        return str(Path(root).expanduser().resolve())
    if scheme == "file":
        return "file://" + _file_path(root)
    rest = root[len(scheme) + 1:]
    if not rest.startswith("//") or len(rest) <= 2:
        raise ValueError(f"lakehouse.root {root!r}: expected {scheme}://<authority>/<prefix>")
    return root.rstrip("/") if len(root.rstrip("/")) > len(scheme) + 3 else root


def _file_path(uri: str) -> str:
    """The local path of a ``file:`` URI (``file:/x``, ``file:///x``, ``file://localhost/x``)."""
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{uri!r}: a file URI with host {parsed.netloc!r} is not a local path")
    path = unquote(parsed.path) or "/"
    return path.rstrip("/") or "/"


def hadoop_spelling(location: str) -> str:
    """``file:/x`` for any spelling of a local file URI (Hadoop's qualified form); other locations unchanged."""
    return "file:" + _file_path(location) if _scheme(location) == "file" else location


def same_location(a: str, b: str) -> bool:
    """Whether two locations are the same place: ``file:/x``, ``file:///x`` and ``/x`` are."""
    def canon(loc: str) -> str:
        scheme = _scheme(loc)
        if scheme is None:
            return os.path.normpath(os.path.abspath(loc))
        if scheme == "file":
            return os.path.normpath(_file_path(loc))
        return loc.rstrip("/")
    return canon(a) == canon(b)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` by string: URI authorities and ``//`` stay intact, parts may not escape with ``..``."""
    out = base.rstrip("/") if base.rstrip("/") and not base.endswith("://") else base
    for part in parts:
        for piece in str(part).split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                raise ValueError(f"path part {part!r} may not contain '..'")
            out = out + ("" if out.endswith("/") else "/") + piece
    return out


class Lakehouse:
    """The lakehouse root and every location the code uses under it: tables and side folders.

    A root is a plain local path (made absolute) or a URI: ``file:///abs``, ``s3a://bucket/prefix``,
    ``abfss://container@account.dfs.core.windows.net/prefix``, ``gs://bucket/prefix``, ``hdfs://nn:8020/prefix``.
    Spark and Delta take every path as given. Code that writes side files with local-only APIs asks
    :meth:`local_path`, which is the local folder for local roots and a clear error for remote ones, or goes through
    :meth:`filesystem` (pyarrow), which works on both.
    """

    def __init__(self, root: str, tables=None):
        self.root = normalize_root(root)
        self._tables = tables

    @classmethod
    def of(cls, conf: Config) -> Lakehouse:
        return cls(conf.lakehouse.root, conf.tables)

    @property
    def scheme(self) -> str | None:
        """``None`` for a plain local root, else the URI scheme (``file``, ``s3a``, ...)."""
        return _scheme(self.root)

    @property
    def is_local(self) -> bool:
        return self.scheme in (None, "file")

    def path(self, *parts: str) -> str:
        """A location under the root, in the root's own spelling (plain path or URI)."""
        return join(self.root, *parts)

    # -- tables
    def table_path(self, logical: str) -> str:
        """Location of a table by its logical name (``"events"``); the physical name comes from ``tables``."""
        if self._tables is None:
            raise ValueError("this Lakehouse was built without a tables config; use Lakehouse.of(conf)")
        return self.path(getattr(self._tables, logical))

    # -- side folders
    def models_dir(self, model_name: str) -> str:
        return self.path("models", model_name)

    def model_version_dir(self, model_name: str, version: int) -> str:
        """Where a trained model version is published (the registry's ``checkpoint`` column)."""
        return self.path("models", model_name, f"v{version:05d}")

    def topic_model_dir(self, safe_name: str) -> str:
        return self.path("models", "topics", safe_name)

    def pipeline_dir(self) -> str:
        return self.path("_pipeline")

    def run_lock_path(self) -> str:
        """The run lock's Delta table (see :mod:`driftrec.runlock`)."""
        return self.path("_pipeline", "run_lock")

    def evaluation_dir(self) -> str:
        return self.path("_evaluation")

    def ray_results_dir(self) -> str:
        """Ray Train's storage_path default: a plain path for local roots, else the URI as pyarrow/Ray spell it."""
        location = self.path("_ray_results")
        return str(self.local_path(location)) if self.is_local else self.pyarrow_uri(location)

    def demo_source_dir(self) -> str:
        return self.path("_demo_source")

    def metastore_dir(self) -> Path:
        """The local Derby metastore/warehouse folder for ``local=True`` sessions.

        Derby needs a local directory: for a local root it lives under the root; for a remote root it goes under the
        system temp dir, keyed by a hash of the root, so two lakehouses never share one and a rerun finds its own.
        """
        if self.is_local:
            return self.local_path()
        key = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"driftrec-metastore-{key}"

    # -- local and pyarrow access to side files
    def local_path(self, location: str | None = None, *, operation: str = "this operation") -> Path:
        """The local filesystem path of ``location`` (default: the root); a clear error for a remote location."""
        loc = self.root if location is None else location
        scheme = _scheme(loc)
        if scheme is None:
            return Path(loc)
        if scheme == "file":
            return Path(_file_path(loc))
        raise NotImplementedError(
            f"{operation} needs a local filesystem path, but {loc} is on {scheme}://; "
            "use a local or file:// lakehouse root for it"
        )

    @staticmethod
    def pyarrow_uri(location: str) -> str:
        """``location`` with the Hadoop scheme replaced by the one pyarrow knows (``s3a://`` -> ``s3://``)."""
        scheme = _scheme(location)
        if scheme in _PYARROW_SCHEMES:
            return _PYARROW_SCHEMES[scheme] + location[len(scheme):]
        return location

    def filesystem(self, location: str):
        """``(pyarrow FileSystem, path inside it)`` for a location under any supported root."""
        from pyarrow import fs

        if _scheme(location) is None:
            return fs.LocalFileSystem(), str(Path(location).absolute())
        uri = self.pyarrow_uri(location)
        try:
            return fs.FileSystem.from_uri(uri)
        except Exception as e:  # pyarrow raises ArrowInvalid/ArrowNotImplementedError/ValueError by build
            raise NotImplementedError(f"no pyarrow filesystem for {location} ({uri}): {e}") from e

    def upload_dir(self, local_dir: str | Path, location: str) -> None:
        """Copy a local folder's files to ``location`` (any root pyarrow reaches), e.g. a model published remotely."""
        from pyarrow import fs

        filesystem, path = self.filesystem(location)
        filesystem.create_dir(path, recursive=True)
        fs.copy_files(str(Path(local_dir).absolute()), path, source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=filesystem)

    def exists(self, location: str) -> bool:
        """Whether a file or folder exists at ``location`` (local, file:// or any store pyarrow reaches)."""
        from pyarrow import fs

        filesystem, path = self.filesystem(location)
        return filesystem.get_file_info(path).type != fs.FileType.NotFound

    def is_dir(self, location: str) -> bool:
        """Whether ``location`` is a folder (on an object store: a prefix with objects under it)."""
        from pyarrow import fs

        filesystem, path = self.filesystem(location)
        return filesystem.get_file_info(path).type == fs.FileType.Directory


@dataclass(frozen=True)
class MergeResult:
    inserted: int
    updated: int
    deleted: int = 0


def ensure_database(spark: SparkSession, conf: Config) -> None:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {conf.lakehouse.database}")


def _catalog_location(spark: SparkSession, conf: Config, spec: TableSpec) -> str | None:
    """The session catalog's location for the table's name ("" when it has no such table), read from the catalog's
    metadata: no Delta snapshot and no Spark job, unlike ``DESCRIBE DETAIL``. ``None`` when that catalog cannot be
    asked this way (then the caller falls back to the query)."""
    try:
        external = spark._jsparkSession.sessionState().catalog().externalCatalog()
        database, table = conf.lakehouse.database.lower(), getattr(conf.tables, spec.logical).lower()
        if not external.tableExists(database, table):
            return ""
        return str(external.getTable(database, table).location().toString())
    except Exception:  # noqa: BLE001 - py4j errors of catalogs without this API: ask with a query instead
        return None


def _check_registered_location(spark: SparkSession, conf: Config, spec: TableSpec) -> None:
    """Refuse to write when the catalog name points at another lakehouse: that would mix two lakehouses."""
    name = conf.table_name(spec.logical)
    location = _catalog_location(spark, conf, spec)
    if location is None:
        if not spark.catalog.tableExists(name):
            return
        location = spark.sql(f"DESCRIBE DETAIL {name}").first()["location"]
    elif location == "":
        return
    expected = conf.table_path(spec.logical)
    if not same_location(location, expected):
        raise RuntimeError(
            f"catalog table {name} points at {location}, not at this lakehouse's {expected}; "
            "use another lakehouse.database or drop the old registration"
        )


# (session, catalog name, path) -> the table, created and registered by this process: a hit costs no catalog or
# storage round trip. The DeltaTable keeps its session alive, so a session's id cannot be reused while cached. MERGE,
# DELETE and history each start from the latest snapshot, so a cached object never acts on a stale one. Code that
# deletes a table's folder or its registration under a live session calls :func:`forget_ensured`.
_ENSURED: dict[tuple[int, str, str], DeltaTable] = {}


def _ensured_key(spark: SparkSession, conf: Config, spec: TableSpec) -> tuple[int, str, str]:
    return id(spark), conf.table_name(spec.logical), conf.table_path(spec.logical)


def forget_ensured(conf: Config) -> None:
    """Forget every table of ``conf``'s database or root, so the next use creates and registers it again."""
    database = conf.lakehouse.database + "."
    paths = {conf.table_path(spec.logical) for spec in ALL_TABLES}
    for key in [k for k in _ENSURED if k[1].startswith(database) or k[2] in paths]:
        del _ENSURED[key]


def _create(spark: SparkSession, conf: Config, spec: TableSpec, registered: bool | None) -> DeltaTable:
    """Create the table if missing and register it; ``registered``: whether the catalog has its name, so its
    location needs checking (``None``: ask; ``False`` also when the caller has checked it)."""
    if registered is None and not spark.catalog.databaseExists(conf.lakehouse.database):
        ensure_database(spark, conf)
        registered = False
    if registered is not False:
        _check_registered_location(spark, conf, spec)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .tableName(conf.table_name(spec.logical))
        .location(conf.table_path(spec.logical))
        .addColumns(spec.schema)
    )
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    if spec.comment:
        builder = builder.comment(spec.comment)
    try:
        table = builder.execute()
    except AnalysisException as e:
        if "DELTA_CREATE_TABLE_SCHEME_MISMATCH" not in str(e) or not _add_new_columns(spark, conf, spec):
            raise
        table = builder.execute()
    _ENSURED[_ensured_key(spark, conf, spec)] = table
    return table


def _add_new_columns(spark: SparkSession, conf: Config, spec: TableSpec) -> bool:
    """A table written by an older release gains the columns its spec has added since; whether it did.

    Only nullable columns appended at the end of the spec qualify (older rows read them as null); any other
    difference is left to the caller's error."""
    path = conf.table_path(spec.logical)
    stored = spark.read.format("delta").load(path).schema
    names = [f.name for f in stored.fields]
    wanted = spec.schema.fields
    if [f.name for f in wanted[: len(names)]] != names or not all(f.nullable for f in wanted[len(names):]):
        return False
    log.info("%s: adding column(s) %s written by a newer release", spec.logical, [f.name for f in wanted[len(names):]])
    empty = spark.createDataFrame([], spec.schema)
    empty.write.format("delta").mode("append").option("mergeSchema", "true").save(path)
    return True


def ensure_table(spark: SparkSession, conf: Config, spec: TableSpec) -> DeltaTable:
    """Create the table at its path if missing and register it in the catalog; idempotent."""
    table = _ENSURED.get(_ensured_key(spark, conf, spec))
    return table if table is not None else _create(spark, conf, spec, None)


def ensure_tables(spark: SparkSession, conf: Config, specs: tuple[TableSpec, ...] = ALL_TABLES) -> None:
    """:func:`ensure_table` for each, with one catalog listing for those this process has not ensured yet.

    The tables are created concurrently (``spark.write_threads``): each creation is a Delta commit and a catalog
    entry, ~0.4 s of driver work on a local session, and a fresh lakehouse has a score of them."""
    from driftrec.spark import run_concurrently  # driftrec.spark imports this module

    todo = [spec for spec in specs if _ensured_key(spark, conf, spec) not in _ENSURED]
    if not todo:
        return
    database = conf.lakehouse.database
    if spark.catalog.databaseExists(database):
        registered = {t.name.lower() for t in spark.catalog.listTables(database)}
    else:
        ensure_database(spark, conf)
        registered = set()
    for spec in todo:  # a name registered at another location stops everything before any table is created
        if getattr(conf.tables, spec.logical).lower() in registered:
            _check_registered_location(spark, conf, spec)
    run_concurrently(spark, [functools.partial(_create, spark, conf, spec, False) for spec in todo],
                     conf.spark.write_threads)


def read_table(spark: SparkSession, conf: Config, spec: TableSpec) -> DataFrame:
    """Read by path: works whether or not the catalog has the table registered."""
    return spark.read.format("delta").load(conf.table_path(spec.logical))


def table_exists(spark: SparkSession, conf: Config, spec: TableSpec) -> bool:
    return DeltaTable.isDeltaTable(spark, conf.table_path(spec.logical))


def table_properties(spark: SparkSession, conf: Config, spec: TableSpec) -> dict[str, str]:
    """The table's Delta properties (``TBLPROPERTIES``)."""
    return dict(DeltaTable.forPath(spark, conf.table_path(spec.logical)).detail().first()["properties"] or {})


def set_table_properties(spark: SparkSession, conf: Config, spec: TableSpec, properties: dict[str, str]) -> None:
    """Set Delta properties on the table (one metadata commit)."""
    pairs = ", ".join(f"{sqltext.literal(k)} = {sqltext.literal(v)}" for k, v in properties.items())
    spark.sql(f"ALTER TABLE {sqltext.delta_path(conf.table_path(spec.logical))} SET TBLPROPERTIES ({pairs})")


def _last_commit_metrics(table: DeltaTable) -> dict:
    """Delta's operation metrics of the table's latest commit (the write just run)."""
    row = table.history(1).select("operationMetrics").first()
    return dict(row["operationMetrics"] or {}) if row else {}


def _merge_result(table: DeltaTable) -> MergeResult:
    """Row counts of the table's latest commit (the MERGE just run)."""
    metrics = _last_commit_metrics(table)
    return MergeResult(
        inserted=int(metrics.get("numTargetRowsInserted", 0)),
        updated=int(metrics.get("numTargetRowsUpdated", 0)),
        deleted=int(metrics.get("numTargetRowsDeleted", 0)),
    )


def merge_upsert(
    spark: SparkSession,
    conf: Config,
    spec: TableSpec,
    df: DataFrame,
    *,
    update_when: str | None = None,
    target_filter: str | None = None,
    metrics: bool = True,
    carry: tuple[str, ...] = (),
) -> MergeResult | None:
    """MERGE ``df`` into the table on its key: insert new keys, update matched ones where ``update_when`` holds.

    ``target_filter`` (an SQL predicate on ``t``) narrows the target scan, e.g. to the partitions the batch
    touches, so a night's MERGE does not read the whole history. ``metrics=False`` skips reading the commit's
    row counts back (a history query) and returns ``None``. ``carry``: columns of ``df`` outside the table that
    ``update_when`` reads (as ``s.<name>``); they are never written.
    """
    if not spec.key:
        raise ValueError(f"table {spec.logical} has no key to MERGE on")
    table = ensure_table(spark, conf, spec)
    source = conform(df, spec, keep=carry)
    on = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
    if target_filter:
        on = f"({target_filter}) AND {on}"
    merge = table.alias("t").merge(source.alias("s"), on)
    if carry:  # the table's columns only, by name: the carried ones must not reach it
        values = {f.name: f"s.{f.name}" for f in spec.schema.fields}
        if update_when is not None:
            merge = merge.whenMatchedUpdate(condition=update_when, set=values)
        merge.whenNotMatchedInsert(values=values).execute()
    else:
        if update_when is not None:
            merge = merge.whenMatchedUpdateAll(condition=update_when)
        merge.whenNotMatchedInsertAll().execute()
    return _merge_result(table) if metrics else None


def append(spark: SparkSession, conf: Config, spec: TableSpec, df: DataFrame) -> None:
    ensure_table(spark, conf, spec)
    conform(df, spec).write.format("delta").mode("append").save(conf.table_path(spec.logical))


def replace_where(
    spark: SparkSession, conf: Config, spec: TableSpec, df: DataFrame, predicate: str, *, metrics: bool = True
) -> int | None:
    """Atomically replace the rows matching ``predicate`` (e.g. ``ds = '2026-01-02'``) with ``df``; rows written.

    Delta validates that every written row matches the predicate, so a rerun of one night replaces exactly it. The
    count comes from the commit's operation metrics, not from reading the table again; ``metrics=False`` skips
    reading them (a history query) and returns ``None``.
    """
    ensure_table(spark, conf, spec)
    path = conf.table_path(spec.logical)
    conform(df, spec).write.format("delta").mode("overwrite").option("replaceWhere", predicate).save(path)
    if not metrics:
        return None
    return int(_last_commit_metrics(DeltaTable.forPath(spark, path)).get("numOutputRows", 0))


# A commit is the atomic creation of _delta_log/<20-digit version>.json, so the highest such file is the version.
_COMMIT_FILE = re.compile(r"^[0-9]{20}\.json$")


def _latest_commit(spark: SparkSession, path_class, hadoop_conf, location: str) -> int | None:
    """The highest commit file's version under ``location``'s ``_delta_log``; ``None`` when there is none.

    A store the JVM cannot list that way (a Java error from the FileSystem) falls back to ``history(1)``.
    """
    from py4j.protocol import Py4JJavaError

    log_dir = path_class(hadoop_spelling(join(location, "_delta_log")))
    try:
        fs = log_dir.getFileSystem(hadoop_conf)
        statuses = fs.listStatus(log_dir) if fs.exists(log_dir) else None
    except Py4JJavaError:
        return int(DeltaTable.forPath(spark, location).history(1).select("version").first()["version"])
    if statuses is None:
        return None
    names = (status.getPath().getName() for status in statuses)  # the listing's order is the store's
    return max((int(name[:20]) for name in names if _COMMIT_FILE.match(name)), default=None)


def table_versions(
    spark: SparkSession, conf: Config, specs: tuple[TableSpec, ...], *, missing_ok: bool = False
) -> dict[str, int | None]:
    """Current Delta version of each table (logical name -> version), from a listing of its ``_delta_log``.

    No query plan and no Spark job: the JVM's Hadoop FileSystem lists the commit files. A table without commits is
    ``None`` with ``missing_ok``, else an error naming it. Not valid for catalog-coordinated commits (none here).
    """
    path_class = spark._jvm.org.apache.hadoop.fs.Path
    hadoop_conf = spark._jsparkSession.sessionState().newHadoopConf()
    out = {spec.logical: _latest_commit(spark, path_class, hadoop_conf, conf.table_path(spec.logical))
           for spec in specs}
    missing = [name for name, version in out.items() if version is None]
    if missing and not missing_ok:
        raise ValueError(f"not a Delta table (no commits): {', '.join(conf.table_path(m) for m in missing)}")
    return out


def table_version(spark: SparkSession, conf: Config, spec: TableSpec) -> int:
    """Current Delta version of an existing table, to restore to on a rerun."""
    return int(table_versions(spark, conf, (spec,))[spec.logical])


def restore_version(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> None:
    """Roll the table back to ``version`` (Delta RESTORE; needs that version's files, i.e. not vacuumed)."""
    table = DeltaTable.forPath(spark, conf.table_path(spec.logical))
    if table_version(spark, conf, spec) != version:
        table.restoreToVersion(version)


# A version a table is "restored" to by emptying it: the state before its first commit, which needs no files.
EMPTY_VERSION = -1


# The ``userMetadata`` of every commit an erasure (forget-user) makes, so that no restore goes back past it.
ERASURE_MARK = "driftrec:erasure"
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


@contextmanager
def erasure_commits(spark: SparkSession) -> Iterator[None]:
    """Mark every Delta commit made in the block as an erasure's (``userMetadata`` :data:`ERASURE_MARK`): a
    restore to a version before one would bring the erased rows back (:func:`erasure_after`)."""
    with session_conf(spark, {_USER_METADATA: ERASURE_MARK}):
        yield


def erasure_after(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> int | None:
    """The first version after ``version`` committed by an erasure (:func:`erasure_commits`), ``None`` if none.

    Reads the ``commitInfo`` of each commit after ``version`` straight from its ``_delta_log`` JSON file: a few
    small reads and no Spark job (Delta's ``history()`` costs several jobs per table, and a rewind checks every
    migration table). A commit file that is gone (log cleanup) cannot be shown to be no erasure, so it counts as one.
    """
    current = table_version(spark, conf, spec)
    if current <= version:
        return None
    path_class = spark._jvm.org.apache.hadoop.fs.Path
    hadoop_conf = spark._jsparkSession.sessionState().newHadoopConf()
    log_dir = hadoop_spelling(join(conf.table_path(spec.logical), "_delta_log"))
    reader = spark._jvm.org.apache.commons.io.IOUtils
    fs = None
    for v in range(version + 1, current + 1):
        p = path_class(f"{log_dir}/{v:020d}.json")
        fs = fs or p.getFileSystem(hadoop_conf)
        if not fs.exists(p):
            return v
        stream = fs.open(p)
        try:
            text = reader.toString(stream, "UTF-8")
        finally:
            stream.close()
        for line in text.splitlines():
            if '"commitInfo"' in line and json.loads(line).get("commitInfo", {}).get("userMetadata") == ERASURE_MARK:
                return v
    return None


def restore_problem(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> str | None:
    """Why :func:`restore_version` to ``version`` would fail or must not run, or ``None`` when it can run.

    Would fail: Delta's RESTORE needs every data file of the target version, and VACUUM (e.g. after a forget-user)
    may have deleted some. Must not: an erasure (forget-user, :func:`erasure_commits`) committed on the table after
    ``version``; restoring would bring the erased users' rows back, even while the old files still exist (the
    default retention keeps them for 168 h). Checked without changing anything, so a caller restoring several
    tables can check them all first: the version's file list from the Delta log (a failure to read it, e.g. a
    cleaned-up log, is a problem too), each file's existence on storage, then the commits since the version.
    """
    if version == EMPTY_VERSION:  # emptying the table brings no row back and needs no file
        return None
    try:
        files = read_table_at(spark, conf, spec, version).inputFiles()
    except Exception as e:  # noqa: BLE001 - any reason the version cannot be read is a reason not to restore it
        return f"{spec.logical} v{version} cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
    path_class = spark._jvm.org.apache.hadoop.fs.Path
    hadoop_conf = spark._jsparkSession.sessionState().newHadoopConf()
    fs = None
    missing = []
    for f in files:
        p = path_class(f)
        fs = fs or p.getFileSystem(hadoop_conf)
        if not fs.exists(p):
            missing.append(f)
    if missing:
        return (f"{spec.logical} v{version}: {len(missing)} of its {len(files)} data files are gone from storage "
                f"(vacuumed), e.g. {missing[0]}")
    try:
        erased = erasure_after(spark, conf, spec, version)
    except Exception as e:  # noqa: BLE001 - commits that cannot be read cannot be shown to hold no erasure
        return f"{spec.logical}: its commits after v{version} cannot be read: {type(e).__name__}: {str(e)[:300]}"
    if erased is not None:
        return (f"{spec.logical} v{version}: users were erased from it at v{erased} (forget-user), or that commit's "
                "log file is gone; restoring an older version would bring their rows back")
    return None


def restore_to(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> None:
    """:func:`restore_version`, where :data:`EMPTY_VERSION` empties the table (no files needed)."""
    if version == EMPTY_VERSION:  # a DELETE without a condition drops every file from the log: no scan, no write
        ensure_table(spark, conf, spec).delete()  # (a table missing here is created; an empty one gets no commit)
    else:
        restore_version(spark, conf, spec, version)


def _commit_metrics_since(table: DeltaTable, version: int, operation: str) -> dict | None:
    """Operation metrics of the first ``operation`` commit after ``version``; ``None`` when there is none."""
    rows = (
        table.history(20)
        .where((F.col("version") > version) & (F.col("operation") == operation))
        .orderBy("version")
        .select("operationMetrics")
        .collect()
    )
    return dict(rows[0]["operationMetrics"] or {}) if rows else None


def delete_where(
    spark: SparkSession, conf: Config, spec: TableSpec, condition: str | Column, *, purge: bool = False
) -> int:
    """Delta DELETE of the rows matching ``condition`` (SQL text or a Column); the number of rows deleted.

    The count is the DELETE commit's operation metrics. A DELETE that matches no row commits nothing, so the table
    version not moving means 0. ``purge=True`` makes the rows physically leave the current files: on a table with
    deletion vectors a DELETE only marks rows in a side file and the data file keeps them (and stays referenced, so
    VACUUM would never remove it); those files are then rewritten without the rows (``REORG ... APPLY (PURGE)``).
    """
    path = conf.table_path(spec.logical)
    table = DeltaTable.forPath(spark, path)
    before = table_version(spark, conf, spec)
    table.delete(condition)
    metrics = _commit_metrics_since(table, before, "DELETE")
    if metrics is None:
        return 0
    marked = int(metrics.get("numDeletionVectorsAdded", 0)) + int(metrics.get("numDeletionVectorsUpdated", 0))
    if purge and marked:
        spark.sql(f"REORG TABLE {sqltext.delta_path(path)} APPLY (PURGE)")
    return int(metrics.get("numDeletedRows", 0))


DELTA_DEFAULT_RETENTION_HOURS = 168.0
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set session confs for the duration of a block, then put back the previous values (or unset them)."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def vacuum(spark: SparkSession, conf: Config, spec: TableSpec, retention_hours: float) -> int | None:
    """VACUUM the table: delete the data files no version younger than ``retention_hours`` references; files deleted.

    Below Delta's 168 h default the retention check is switched off for this call only (the session conf is put
    back after). VACUUM's own logging commits are forced on for the call, so the count is its ``VACUUM END`` metrics;
    ``None`` if that commit is missing. Unless the session sets it, the file listing runs with a few tasks per core
    instead of Spark's 10,000 partition-discovery partitions (minutes of empty tasks on a small machine).
    """
    if retention_hours < 0:
        raise ValueError(f"retention_hours must be >= 0, got {retention_hours}")
    table = DeltaTable.forPath(spark, conf.table_path(spec.logical))
    before = table_version(spark, conf, spec)
    settings = {"spark.databricks.delta.vacuum.logging.enabled": "true"}
    if retention_hours < DELTA_DEFAULT_RETENTION_HOURS:
        settings[_RETENTION_CHECK] = "false"
    if spark.conf.get(_LISTING_PARALLELISM, None) is None:
        settings[_LISTING_PARALLELISM] = str(min(10_000, 4 * spark.sparkContext.defaultParallelism))
    with session_conf(spark, settings):
        table.vacuum(float(retention_hours))
    metrics = _commit_metrics_since(table, before, "VACUUM END")
    return int(metrics.get("numDeletedFiles", 0)) if metrics is not None else None


def replace_groups(
    spark: SparkSession, conf: Config, spec: TableSpec, df: DataFrame, group_by: tuple[str, ...], *,
    metrics: bool = True,
) -> MergeResult | None:
    """Make the table's rows for every group in ``df`` (e.g. one ``from_item``) exactly ``df``'s rows.

    One MERGE on the key: new rows are inserted, kept rows updated, and the group's old rows absent from ``df``
    deleted; groups not in ``df`` are untouched. For pruned per-group views such as a top-N successor list.
    """
    if not spec.key:
        raise ValueError(f"table {spec.logical} has no key to MERGE on")
    table = ensure_table(spark, conf, spec)
    source = conform(df, spec)
    groups = source.select(*group_by).distinct()
    stale = (
        read_table(spark, conf, spec)
        .join(groups, list(group_by), "left_semi")
        .join(source.select(*spec.key), list(spec.key), "left_anti")
    )
    marked = source.withColumn("_drop", F.lit(False)).unionByName(stale.withColumn("_drop", F.lit(True)))
    on = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
    values = {f.name: f"s.{f.name}" for f in spec.schema.fields}
    (
        table.alias("t")
        .merge(marked.alias("s"), on)
        .whenMatchedDelete(condition="s._drop")
        .whenMatchedUpdate(set=values)
        .whenNotMatchedInsert(condition="NOT s._drop", values=values)
        .execute()
    )
    return _merge_result(table) if metrics else None


def read_table_at(spark: SparkSession, conf: Config, spec: TableSpec, version: int) -> DataFrame:
    """Read the table as of a Delta version: a job reads its inputs pinned while it rewrites the same tables."""
    return spark.read.format("delta").option("versionAsOf", version).load(conf.table_path(spec.logical))


def read_location(spark: SparkSession, location: str) -> DataFrame:
    """Read a Delta table outside the lakehouse by its location (e.g. a user-supplied input such as
    ``topk.extra_users``)."""
    if not DeltaTable.isDeltaTable(spark, location):
        raise ValueError(f"not a Delta table: {location}")
    return spark.read.format("delta").load(location)


def snapshot_files(conf: Config, spec: TableSpec, version: int, partition: dict[str, str]) -> list[str]:
    """The data files of one partition of the table at ``version``, as URIs, read from the Delta log without Spark
    (delta-rs), for readers outside Spark such as Ray Data. Right only for tables without deletion vectors (written
    by whole-partition replaces)."""
    from deltalake import DeltaTable as ArrowDeltaTable

    return ArrowDeltaTable(conf.table_path(spec.logical), version=version).file_uris(
        file_pruning_predicate=[(k, "=", v) for k, v in partition.items()]
    )


def snapshot_bytes(conf: Config, spec: TableSpec, version: int, partition: dict[str, str]) -> int:
    """The bytes on storage of the files :func:`snapshot_files` lists, from the same log (delta-rs, no Spark)."""
    import pyarrow as pa
    from deltalake import DeltaTable as ArrowDeltaTable

    actions = pa.table(ArrowDeltaTable(conf.table_path(spec.logical), version=version).get_add_actions(flatten=True))
    sizes = actions.column("size_bytes").to_pylist()
    parts = {k: actions.column(f"partition.{k}").to_pylist() for k in partition}
    return int(sum(size for i, size in enumerate(sizes)
                   if all(str(parts[k][i]) == str(v) for k, v in partition.items())))


def register_all(spark: SparkSession, conf: Config) -> None:
    """Register every table that exists on storage, e.g. for a session catalog or a fresh metastore."""
    for spec in ALL_TABLES:
        if table_exists(spark, conf, spec):
            ensure_table(spark, conf, spec)
