#!/usr/bin/env bash
# Newcomer command 1: set up and run the nightly pipeline locally (local Spark, local Ray, Delta under ./lakehouse).
#   bash infra/local/demo.sh                       # generated demo data with known ground truth
#   bash infra/local/demo.sh --movielens DIR       # a MovieLens release instead
# Extra flags go to `driftrec demo` (e.g. --lakehouse /tmp/lh, --set synthetic.users=5000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec driftrec demo "$@"
