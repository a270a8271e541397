#!/usr/bin/env bash
# The trainer's entry on a Ray cluster (`ray job submit ... -- bash infra/ray/train_entry.sh --date D ...`).
# jobs/train.py reads its Delta snapshot through a local Spark driver on the Ray head and trains on the cluster's
# workers: Ray is found through RAY_ADDRESS, which `ray job submit` sets.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec spark-submit --master "local[*]" --packages "${DELTA_PACKAGE:-io.delta:delta-spark_2.13:4.4.0}" \
  --conf spark.driver.memory="${DRIVER_MEMORY:-8g}" "$REPO/jobs/train.py" "$@"
