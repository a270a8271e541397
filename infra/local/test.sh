#!/usr/bin/env bash
# Newcomer command 2: set up and run the test suite (real Spark, Delta, Ray and torch; no GPU needed).
# Extra flags go to pytest, e.g. `bash infra/local/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
exec python -m pytest "$@"
