"""The benchmarks' configs take the lakehouse root as given (issue 20 item 7): a quote, a tab or a space in the path
used to break their TOML overrides. Built without running a benchmark (no Spark)."""

from __future__ import annotations

import ast
from types import SimpleNamespace

import pytest

from benchmarks import bench_migration, bench_night_jobs, bench_training, tune_blend
from driftrec.config import load_config
from driftrec.lakehouse import Lakehouse, normalize_root
from tests.conftest import REPO


def _topk_config(root):
    """bench_topk builds its config inline in ``main``: that very call, evaluated with the root and its flags."""
    tree = ast.parse((REPO / "benchmarks" / "bench_topk.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "load_config"]
    assert len(calls) == 1, "bench_topk.py builds its config once"
    code = compile(ast.fix_missing_locations(ast.Expression(calls[0])), "bench_topk.py", "eval")
    args = SimpleNamespace(driver_memory="2g", k=10, all_users=False)
    return eval(code, {"load_config": load_config, "root": root, "args": args, "str": str})  # noqa: S307


@pytest.mark.parametrize("name", ['a "quoted" root', "a\ttab", "it's spaced", 'back\\slash ".."'])
def test_each_benchmark_keeps_a_hostile_root_as_given(tmp_path, name):
    root = tmp_path / name
    args = SimpleNamespace(shuffle_partitions=2, driver_memory="2g", commit_every=3, epochs=1,
                           overrides=["training.batch_size=8"])
    confs = {
        "bench_migration": bench_migration.bench_config(root, args),
        "bench_night_jobs": bench_night_jobs.bench_config(root, 1, 4, args),
        "bench_training": bench_training.bench_config(root, args, "training.num_workers=2"),
        "tune_blend": tune_blend.bench_config(root, args),
        "bench_topk": _topk_config(root),
    }
    for bench, conf in confs.items():
        assert Lakehouse.of(conf).root == normalize_root(str(root)), bench
        assert Lakehouse.of(conf).table_path("events") == normalize_root(str(root)) + "/events", bench
    # The other settings still arrive.
    assert confs["bench_migration"].migration.commit_every_nights == 3
    assert confs["bench_night_jobs"].spark.write_threads == 4 and confs["bench_night_jobs"].lakehouse.database == \
        "bench_night_jobs1"
    assert confs["bench_training"].training.num_workers == 2 and confs["bench_training"].training.batch_size == 8
    assert confs["bench_topk"].topk.k == 10
