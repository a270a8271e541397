"""Airflow DAG for driftrec's weekly tune: ``jobs/tune.py`` chooses the blend and the engine's scoring knobs on the
validation split (each user's latest stored event held out) and records them in ``tuned_settings``; from the next
night on, the nightly top-k (``driftrec_nightly``) serves that choice (``topk.use_tuned``).

A DAG of its own because it runs weekly and reads no date. It is submitted like the nightly's Spark stages
(``spark_stage`` from ``driftrec_nightly.py``: the same Delta package, packed environment and config; Airflow puts
the DAGs folder on ``sys.path``) and records its row under the DAG run's id (``--run-id``), so clearing the task
replaces that row instead of adding another. It takes no run lock (it writes only ``tuned_settings`` and its own
scratch lakehouse), so the schedule, not a guard, keeps it away from the 02:30 night: Sunday 10:00 UTC, served
from the 02:30 run on Monday.

The scratch lakehouse must be a local or ``file://`` path that the driver and every executor can reach (a shared
mount), as for ``driftrec evaluate``. Airflow variable ``driftrec_tune_work_dir`` sets it (empty: the config's
``tuning.work_dir``, else ``<lakehouse root>/_evaluation/tune``, which a remote root refuses). The tuning model
trains where the config's ``training.ray_address`` points (empty: a local Ray inside the Spark driver).
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.models import Variable
from driftrec_nightly import default_args, spark_stage

TUNE_WORK_DIR = Variable.get("driftrec_tune_work_dir", default_var="")

with DAG(
    dag_id="driftrec_tune",
    description="driftrec: choose the blend and the engine's scoring knobs on the validation split, weekly",
    schedule="0 10 * * 0",  # Sundays 10:00 UTC, well after the 02:30 night
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one search at a time: two would share one scratch lakehouse
    default_args=default_args,
    tags=["driftrec"],
) as dag:
    work_dir = ["--set", f"tuning.work_dir={TUNE_WORK_DIR}"] if TUNE_WORK_DIR else []
    tune = spark_stage("tune", "tune", ["--run-id", "{{ run_id }}", *work_dir])
