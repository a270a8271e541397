#!/usr/bin/env bash
# Pack the driftrec Python environment for spark-submit --archives (executors unpack it as ./environment).
#   bash infra/spark/pack_env.sh [OUT.tar.gz]        (default: dist/driftrec-env.tar.gz)
# Build it on the cluster's OS and Python version: the archive holds compiled wheels (torch, pyarrow).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$REPO/dist/driftrec-env.tar.gz}"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
python3 -m venv "$BUILD/env"
"$BUILD/env/bin/pip" install -q --upgrade pip
"$BUILD/env/bin/pip" install -q "$REPO" venv-pack
mkdir -p "$(dirname "$OUT")"
"$BUILD/env/bin/venv-pack" -p "$BUILD/env" -o "$OUT" --force
echo "packed $OUT"
