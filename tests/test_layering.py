"""The import direction between the top-level packages, read from the source with ``ast`` (nothing is imported).

    jobs/          -> anything (entry points: the spark-submit jobs and the local ``driftrec`` command, jobs/cli.py)
    spark_udfs/    -> driftrec/ (and itself)
    ray_trainers/  -> driftrec/ (and itself)
    driftrec/      -> driftrec/ only: the library never depends on what launches it

Lazy imports inside functions count too: a lazy import is still a dependency. ``EXCEPTIONS`` lists the allowed
ones, each with its reason; it is empty.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("driftrec", "jobs", "spark_udfs", "ray_trainers")
ALLOWED = {
    "driftrec": {"driftrec"},
    "spark_udfs": {"driftrec", "spark_udfs"},
    "ray_trainers": {"driftrec", "ray_trainers"},
}
# (importing module, imported module) -> why it cannot be avoided. Keep empty if at all possible.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str | None = None) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import in ``path`` (module ``module``, by default
    from its place in the repository), relative ones resolved, plus ``importlib.import_module("...")`` /
    ``__import__("...")`` of a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top = {id(n) for n in tree.body}
    top |= {id(n) for stmt in tree.body if isinstance(stmt, (ast.If, ast.Try)) for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        at_top = id(node) in top
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, at_top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno, at_top))
            if not node.module:  # from . import x: x is a module of the package
                found += [(f"{base}.{a.name}", node.lineno, at_top) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = ast.unparse(node.func)
            if func in ("importlib.import_module", "import_module", "__import__"):
                found.append((node.args[0].value, node.lineno, at_top))
    return found


def first_party_edges(package: str) -> list[tuple[str, str, int, bool]]:
    """``(importing module, imported first-party module, line, at module level)`` for every file of ``package``."""
    edges = []
    for path in sorted((REPO / package).rglob("*.py")):
        for target, line, at_top in imports(path):
            if target.split(".")[0] in PACKAGES:
                edges.append((_module_name(path), target, line, at_top))
    return edges


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_in_the_allowed_direction(package):
    wrong = [
        f"{src}:{line} imports {dst}{'' if top else ' (lazily)'}"
        for src, dst, line, top in first_party_edges(package)
        if dst.split(".")[0] not in ALLOWED[package] and (src, dst) not in EXCEPTIONS
    ]
    assert not wrong, f"{package}/ may import only from {sorted(ALLOWED[package])}:\n" + "\n".join(wrong)


def test_exceptions_are_still_needed():
    edges = {(src, dst) for p in ALLOWED for src, dst, _, _ in first_party_edges(p)}
    assert not set(EXCEPTIONS) - edges, "an exception no longer matches an import: remove it"


def test_the_scanner_sees_module_level_lazy_and_relative_imports(tmp_path):
    # Known edges of the real tree, so a scanner that stopped seeing imports would fail here, not pass silently.
    edges = {(src, dst, top) for p in PACKAGES for src, dst, _, top in first_party_edges(p)}
    assert ("ray_trainers.sasrec_trainer", "driftrec.config", True) in edges
    assert ("spark_udfs.topk", "driftrec.models.protocol", False) in edges  # inside a function
    assert ("jobs.cli", "jobs", True) in edges and ("jobs.nightly", "jobs.migrate", False) not in edges
    assert sum(1 for e in edges if e[0].startswith("driftrec")) > 50
    # Relative and dynamic forms resolve to the absolute module (none in the tree today; a future one must count).
    fake = tmp_path / "state.py"
    fake.write_text("from . import bulk\nfrom ..tables import EVENTS\nimport importlib\n"
                    "def f():\n    importlib.import_module('jobs.topk')\n    from .kernels import x\n")
    got = imports(fake, "driftrec.migration.state")
    assert ("driftrec.migration.bulk", 1, True) in got and ("driftrec.tables", 2, True) in got
    assert ("jobs.topk", 5, False) in got and ("driftrec.migration.kernels", 6, False) in got


def test_the_driftrec_command_is_an_entry_point_not_library_code():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["driftrec"] == "jobs.cli:main"
    assert not (REPO / "driftrec" / "cli.py").exists()
    assert all(target.startswith("jobs.") for target in scripts.values()), scripts
    # Every mention of the command's module in docs, infra and tests names the new place.
    stale = [
        f"{p.relative_to(REPO)}:{i}"
        for p in [REPO / "README.md", *REPO.joinpath("infra").rglob("*"), *REPO.joinpath("tests").rglob("*.py"),
                  *REPO.joinpath("benchmarks").rglob("*.py")]
        if p.is_file() and p != Path(__file__)
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r"driftrec[./]cli\b", line)
    ]
    assert not stale, stale


@pytest.mark.parametrize("command, job", [("migrate", "migrate"), ("embed-items", "embed_items"),
                                          ("train", "train"), ("topk", "topk")])
def test_the_stage_subcommands_take_the_flags_of_the_stage_entry_points(command, job):
    """`driftrec <stage>` and `jobs/<stage>.py` are the same launch (same flags, same pipeline_runs row)."""
    import argparse
    import importlib

    from driftrec.jobargs import base_parser
    from jobs.cli import build_parser

    def options(parser: argparse.ArgumentParser) -> set[str]:
        return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    own = base_parser(job)
    importlib.import_module(f"jobs.{job}").add_arguments(own)
    assert options(sub) == options(own) and {"--date", "--run-id"} <= options(own)
