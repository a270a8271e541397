"""Airflow DAG for driftrec's night: ingest -> migrate -> embed items -> train (Ray) -> top-k.

Every Spark stage is a ``SparkSubmitOperator`` with the Delta package and the packed environment
(``infra/spark/pack_env.sh``); training is submitted to the Ray cluster with ``ray job submit``. Each task passes
the run's logical date (``{{ ds }}``), and every job is idempotent per date, so clearing a task reruns it safely.
The four nightly stages behave as under ``driftrec nightly``: ``migrate --date`` replays late events inside
``pipeline.late_window_days`` itself, and each stage records its ``pipeline_runs`` row under the DAG run's id
(``--run-id``), so a later ``driftrec nightly`` for the date resumes after what this DAG finished.

Airflow variables: ``driftrec_repo`` (checkout on the workers), ``driftrec_config`` (TOML), ``driftrec_env_archive``
(packed venv), ``driftrec_events`` (event log location, with ``{ds}`` for the day), ``driftrec_ray_address``.
Connection ``spark_default`` names the Spark master.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.models import Variable
from airflow.operators.bash import BashOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

REPO = Variable.get("driftrec_repo", default_var="/opt/driftrec")
CONFIG = Variable.get("driftrec_config", default_var="/etc/driftrec/prod.toml")
ENV_ARCHIVE = Variable.get("driftrec_env_archive", default_var="/opt/driftrec/dist/driftrec-env.tar.gz")
EVENTS = Variable.get("driftrec_events", default_var="s3a://logs/events/dt={ds}/")
RAY_ADDRESS = Variable.get("driftrec_ray_address", default_var="http://ray-head:8265")
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.4.0"

default_args = {
    "owner": "driftrec",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=10),
}


def spark_stage(task_id: str, job: str, args: list[str]) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        application=f"{REPO}/jobs/{job}.py",
        application_args=[*args, "--config", CONFIG],
        name=f"driftrec-{job}",
        conn_id="spark_default",
        packages=DELTA_PACKAGE,
        archives=f"{ENV_ARCHIVE}#environment",
        conf={"spark.pyspark.python": "./environment/bin/python", "spark.sql.session.timeZone": "UTC"},
    )


with DAG(
    dag_id="driftrec_nightly",
    description="driftrec: ingest, interest migration, item embeddings, fine-tune, top-k",
    schedule="30 2 * * *",  # 02:30 UTC: the previous day's events are complete
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one night at a time: the stages of a lakehouse must not race
    default_args=default_args,
    tags=["driftrec"],
) as dag:
    ingest = spark_stage("ingest", "ingest", ["--events", EVENTS.replace("{ds}", "{{ ds }}"), "--format", "parquet"])
    migrate = spark_stage("migrate", "migrate", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"])
    embed = spark_stage("embed_items", "embed_items", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"])
    train = BashOperator(
        task_id="train",
        bash_command=(
            f"ray job submit --address {RAY_ADDRESS} --working-dir {REPO} -- "
            f"bash infra/ray/train_entry.sh --date {{{{ ds }}}} --run-id '{{{{ run_id }}}}' --config {CONFIG}"
        ),
    )
    topk = spark_stage("topk", "topk", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"])

    ingest >> migrate >> embed >> train >> topk
