"""The cluster launch files in ``infra/``: they parse, name entry points that exist, pass flags those accept, and
``spark-submit`` of a job in local mode works (Airflow, Kubernetes and a Ray cluster are not available here)."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
DAY = "2026-11-29"
DELTA = re.search(r"delta-spark==([\d.]+)", (REPO / "pyproject.toml").read_text()).group(1)  # the pinned version
# Every spark-submit job; jobs/cli.py is the local `driftrec` command over them, not a job of its own.
# scratch.py holds the scratch lakehouses evaluate and tune share: a module of jobs/, not a job.
JOBS = {p.stem for p in (REPO / "jobs").glob("*.py") if p.stem not in ("__init__", "cli", "scratch")}


def job_parser(job: str):
    from driftrec.jobargs import base_parser

    module = importlib.import_module(f"jobs.{job}")
    assert callable(getattr(module, "entrypoint", None)), f"jobs/{job}.py has no entrypoint"
    source = (REPO / "jobs" / f"{job}.py").read_text()
    assert 'if __name__ == "__main__":' in source, f"jobs/{job}.py cannot run under spark-submit"
    parser = base_parser(job)
    module.add_arguments(parser)
    return parser


def accepts(job: str, args: list[str]) -> None:
    """``args`` parse with the job's own parser (argparse exits on an unknown flag or a bad value)."""
    try:
        job_parser(job).parse_args(args)
    except SystemExit as exc:  # pragma: no cover - the assertion message is the point
        raise AssertionError(f"jobs/{job}.py rejects {args}") from exc


def test_job_parsers_reject_what_they_do_not_know():
    with pytest.raises(SystemExit):
        job_parser("topk").parse_args(["--date", "yesterday"])
    with pytest.raises(SystemExit):
        job_parser("migrate").parse_args(["--dates", DAY])
    assert job_parser("train").parse_args(["--date", DAY]).date.isoformat() == DAY


def test_shell_scripts_parse_and_submit_names_real_jobs():
    scripts = sorted(INFRA.rglob("*.sh"))
    assert len(scripts) >= 5
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    text = (INFRA / "spark" / "submit.sh").read_text()
    names = re.search(r"^\s*([a-z_|]+)\) ;;", text, re.M).group(1).split("|")
    assert set(names) == JOBS and {"ingest", "nightly", "forget_user"} <= JOBS
    for name in names:
        job_parser(name)
    # An unknown job is refused before spark-submit is looked for.
    bad = subprocess.run(["bash", str(INFRA / "spark" / "submit.sh"), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown job 'nope'" in bad.stderr
    for path in (INFRA / "spark" / "submit.sh", INFRA / "ray" / "train_entry.sh", INFRA / "airflow" / "driftrec_nightly.py"):
        assert f"io.delta:delta-spark_2.13:{DELTA}" in path.read_text(), path


def test_ray_files_parse_and_pin_the_installed_ray():
    import ray

    version = ray.__version__
    cluster = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{version}-")
    gpu = [n for n in cluster["available_node_types"].values() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all(n["min_workers"] == 0 for n in gpu)  # scales to zero between nights
    assert cluster["head_node_type"] in cluster["available_node_types"]

    job = yaml.safe_load((INFRA / "ray" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"]["rayVersion"] == version
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for w in workers for c in w["template"]["spec"]["containers"])
    # The entrypoint runs the trainer script with flags jobs/train.py accepts.
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["bash", "infra/ray/train_entry.sh"] and (REPO / entry[1]).exists()
    accepts("train", [DAY if a == '"$DRIFTREC_DATE"' else a for a in entry[2:]])
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{version}-" in dockerfile
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(.+?) \S+$", dockerfile, re.M):
        for part in src.split():
            assert (REPO / part).exists(), f"Dockerfile copies missing {part}"


def _literal_calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_airflow_dag_stages_name_jobs_with_flags_they_accept():
    tree = ast.parse((INFRA / "airflow" / "driftrec_nightly.py").read_text())
    stages = {}
    for call in _literal_calls(tree, "spark_stage"):
        task, job = (ast.literal_eval(a) for a in call.args[:2])
        # A computed argument (the event location from an Airflow variable) stands for a path.
        args = [ast.literal_eval(a) if isinstance(a, ast.Constant) else "/data/events/" for a in call.args[2].elts]
        stages[task] = (job, [DAY if a == "{{ ds }}" else a for a in args])
    assert set(stages) == {"ingest", "migrate", "embed_items", "topk"}
    for job, args in stages.values():
        assert (REPO / "jobs" / f"{job}.py").exists()
        accepts(job, [*args, "--config", "prod.toml"])
    assert "--date" in stages["migrate"][1] and "--date" in stages["topk"][1]
    # The nightly stages name their night and record their pipeline_runs rows under the DAG run's id.
    for task in ("migrate", "embed_items", "topk"):
        args = stages[task][1]
        assert args[args.index("--date") + 1] == DAY and args[args.index("--run-id") + 1] == "{{ run_id }}", task
    # The train step submits the Ray entry script with the logical date; the chain runs the stages in order.
    bash = next(c for c in _literal_calls(tree, "BashOperator"))
    command = ast.unparse(next(k.value for k in bash.keywords if k.arg == "bash_command"))
    assert "ray job submit" in command and "infra/ray/train_entry.sh --date {{{{ ds }}}}" in command
    assert "--run-id '{{{{ run_id }}}}'" in command
    accepts("train", ["--date", DAY, "--run-id", "scheduled__2026-11-29T02:30:00+00:00"])
    chain = next(n for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.BinOp))
    assert ast.unparse(chain) == "ingest >> migrate >> embed >> train >> topk"


def test_spark_submit_runs_a_job_in_local_mode(tmp_path):
    """``spark-submit jobs/ingest.py`` (master from the command line, Delta from --packages) writes real tables."""
    from deltalake import DeltaTable

    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp,weight,event_type\n1,10,1764374400,1.0,view\n"
                      "1,11,1764378000,1.0,view\n2,10,1764381600,1.0,view\nx,10,1764381600,1.0,view\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,categories,text\n10,Alpha,Drama,An alpha\n11,Beta,Comedy,A beta\n")
    lake = tmp_path / "lake"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(spark_submit), "--master", "local[1]", "--packages", f"io.delta:delta-spark_2.13:{DELTA}",
           "--conf", f"spark.sql.warehouse.dir={tmp_path / 'warehouse'}", "--conf", "spark.ui.enabled=false",
           str(REPO / "jobs" / "ingest.py"), "--lakehouse", str(lake), "--events", str(events), "--items", str(items)]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = DeltaTable(str(lake / "events")).to_pyarrow_table()
    assert got.num_rows == 3 and sorted(got.column("item_id").to_pylist()) == [10, 10, 11]
    assert DeltaTable(str(lake / "quarantine")).to_pyarrow_table().num_rows == 1  # user "x"
    assert DeltaTable(str(lake / "items")).to_pyarrow_table().num_rows == 2
