"""Zip driftrec's packages for ``spark-submit --py-files``: executors without the packed env import the code from it.

    python3 infra/spark/pack_code.py [OUT.zip]     (default: dist/driftrec-code.zip; prints the path)
Standard library only, so any Python 3 can build it; infra/spark/submit.sh and tests/test_cluster.py both use it.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("driftrec", "jobs", "spark_udfs", "ray_trainers")


def pack_code(dest: Path, repo: Path = REPO) -> Path:
    """Write the product's packages (no bytecode caches) to ``dest``, replacing it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for pkg in PACKAGES:
            for f in sorted((repo / pkg).rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    z.write(f, f.relative_to(repo).as_posix())
    return dest


if __name__ == "__main__":
    print(pack_code(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "driftrec-code.zip"))
