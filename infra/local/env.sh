#!/usr/bin/env bash
# Create (once) and activate the driftrec virtualenv. Sourced by demo.sh and test.sh.
#
# The venv lives outside the checkout, keyed by a hash of pyproject.toml, so a second run, a fresh clone on the
# same machine, or CI reuses it instead of reinstalling torch and Ray (several GB). uv's download cache and Spark's
# Ivy cache (~/.ivy2.5.2: the Delta jars) are reused the same way.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${DRIFTREC_CACHE:-$HOME/.cache/driftrec}"
PY="${DRIFTREC_PYTHON:-python3}"
KEY="$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-12)"
VENV="${DRIFTREC_VENV:-$CACHE/venv-$KEY}"

mkdir -p "$CACHE"
if ! command -v uv >/dev/null 2>&1 && [ ! -x "$CACHE/uv/bin/uv" ]; then
  echo "[driftrec] installing uv (package installer) into $CACHE/uv"
  "$PY" -m venv "$CACHE/uv"
  "$CACHE/uv/bin/pip" install -q uv
fi
UV="$(command -v uv || echo "$CACHE/uv/bin/uv")"

if [ ! -f "$VENV/.complete" ]; then
  echo "[driftrec] creating virtualenv $VENV (first run downloads ~3 GB: torch, Ray, Spark)"
  rm -rf "$VENV"
  "$UV" venv -q -p "$PY" "$VENV"
  VIRTUAL_ENV="$VENV" "$UV" pip install -q "$REPO[test]"
  touch "$VENV/.complete"
fi
# Point the venv at this checkout (cheap; makes the console scripts run this tree's code).
VIRTUAL_ENV="$VENV" "$UV" pip install -q --no-deps -e "$REPO"

export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export RAY_USAGE_STATS_ENABLED=0
