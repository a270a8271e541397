#!/usr/bin/env bash
# Newcomer command 2: set up and run the test suite (real Spark, Delta, Ray and torch; no GPU needed).
# Extra flags go to pytest, e.g. `bash infra/local/test.sh -m "not slow"` for the quick subset.
# One pytest process by default. DRIFTREC_TEST_WORKERS=N runs N pytest-xdist workers, a whole file per worker, longest
# files first (tests/conftest.py): on this 2-core box two workers measured no faster (each ran about half speed).
# DRIFTREC_HEAVY_TESTS=1 adds the opt-in multi-night scenarios (tests marked heavy).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
WORKERS="${DRIFTREC_TEST_WORKERS:-0}"
if [ "$WORKERS" = "0" ]; then
  exec python -m pytest "$@"
fi
exec python -m pytest -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
