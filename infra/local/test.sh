#!/usr/bin/env bash
# Newcomer command 2: set up and run the test suite (real Spark, Delta, Ray and torch; no GPU needed).
# Extra flags go to pytest, e.g. `bash infra/local/test.sh -m "not slow"` for the quick subset.
# Two pytest workers (DRIFTREC_TEST_WORKERS; 0 = one process), each with its own Spark and Ray, a test file per
# worker at a time so module fixtures are built once, longest files first (tests/conftest.py): one driver's
# planning thread leaves a core half idle. DRIFTREC_HEAVY_TESTS=1 adds the opt-in whole-night robustness scenarios.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
WORKERS="${DRIFTREC_TEST_WORKERS:-2}"
if [ "$WORKERS" = "0" ]; then
  exec python -m pytest "$@"
fi
exec python -m pytest -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
