"""The one SparkSession builder every job uses.

Job code never sets the master. Under ``spark-submit`` the cluster's settings (master, Delta jars from
``--packages``, memory) win; only the local ``driftrec`` command passes ``local=True``, which adds ``local[*]``
and fetches the Delta jars through ``configure_spark_with_delta_pip``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyspark.sql import SparkSession

from driftrec.config import Config
from driftrec.lakehouse import Lakehouse

T = TypeVar("T")

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


# Driver loggers whose every warning in this product is known and harmless, set to ERROR so the console keeps the
# jobs' own step lines and any warning that matters. Each says, once per table or session:
KNOWN_HARMLESS = (
    # "Couldn't find corresponding Hive SerDe for data source provider delta": a Delta table in a Hive metastore
    "org.apache.spark.sql.hive.HiveExternalCatalog",
    # "HiveConf of name hive.internal.ss.authz.settings.applied.marker does not exist"
    "org.apache.hadoop.hive.conf.HiveConf",
    # "METASTORE_FILTER_HOOK will be ignored, since hive.security.authorization.manager is set to ..."
    "org.apache.hadoop.hive.ql.session.SessionState",
    # "RDD N was locally checkpointed, its lineage has been truncated": localCheckpoint() is used on purpose
    "org.apache.spark.rdd.MapPartitionsRDD",
    # "Truncated the string representation of a plan since it was too large"
    "org.apache.spark.util.SparkStringUtils",
)


def quiet_known_warnings(spark: SparkSession) -> None:
    """:data:`KNOWN_HARMLESS` loggers to ERROR in the driver's log4j; a logging setup without log4j 2 is left alone."""
    from py4j.protocol import Py4JError

    try:
        jvm = spark.sparkContext._jvm
        error = jvm.org.apache.logging.log4j.Level.ERROR
        for name in KNOWN_HARMLESS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, error)
    except Py4JError:
        pass


def _console_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def build_spark(conf: Config, *, app_name: str = "driftrec", local: bool = False) -> SparkSession:
    """Return the active session or build one configured for Delta and UTC timestamps."""
    builder = SparkSession.builder.appName(app_name)
    settings = {
        **DELTA_CONF,
        # Event dates and decay ages are computed in UTC whatever the machine's zone.
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(conf.spark.shuffle_partitions),
    }
    if local:
        # Derby and the session warehouse need a local folder: the root itself when it is local, else a folder under
        # the system temp dir keyed by the root (see Lakehouse.metastore_dir). Tables always live at their root paths.
        root = Lakehouse.of(conf).metastore_dir()
        settings.update(
            {
                "spark.driver.memory": conf.spark.driver_memory,
                "spark.ui.enabled": str(conf.spark.ui).lower(),
                # Stage progress bars on a terminal, where each redraws in place; into a file or a CI log they are
                # thousands of lines per hour that bury the jobs' own step lines (a cluster sets this in its
                # spark-defaults).
                "spark.ui.showConsoleProgress": str(_console_is_terminal()).lower(),
                "spark.sql.warehouse.dir": str(root / "_warehouse"),
                # Delta rebuilds table state with 50 tasks by default: right for a cluster, pure overhead locally.
                "spark.databricks.delta.snapshotPartitions": "2",
                "spark.driver.extraJavaOptions": f"-Dderby.system.home={root / '_metastore'}",
                "spark.hadoop.javax.jdo.option.ConnectionURL": (
                    f"jdbc:derby:;databaseName={root / '_metastore' / 'metastore_db'};create=true"
                ),
            }
        )
    settings.update(conf.spark.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if local:
        from delta import configure_spark_with_delta_pip

        builder = builder.master(conf.spark.master)
        if conf.lakehouse.catalog == "hive":
            builder = builder.enableHiveSupport()
        # It sets spark.jars.packages to the Delta jar alone: packages the config asks for (hadoop-aws for an s3a://
        # root) are passed along, or they would be dropped without a word.
        extra = [p.strip() for p in settings.get("spark.jars.packages", "").split(",") if p.strip()]
        builder = configure_spark_with_delta_pip(builder, extra_packages=extra)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    quiet_known_warnings(spark)
    return spark


def run_concurrently(spark: SparkSession, tasks: list[Callable[[], T]], threads: int) -> list[T]:
    """Run independent Spark actions (e.g. writes to different tables) from up to ``threads`` driver threads.

    Each task's thread inherits the caller's Spark local properties and tags (job group, scheduler pool). Every task runs to
    its end even when one fails, so the caller knows exactly which ran: the first error is raised after all finish.
    Results come back in the order of ``tasks``.
    """
    if threads <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    from pyspark.util import inheritable_thread_target

    with ThreadPoolExecutor(max_workers=min(threads, len(tasks)), thread_name_prefix="driftrec-write") as pool:
        inherit = inheritable_thread_target(spark)
        futures = [pool.submit(inherit(task)) for task in tasks]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]
