#!/usr/bin/env bash
# spark-submit one driftrec job on a cluster.
#   infra/spark/submit.sh JOB [job flags...]
#   JOB: ingest | migrate | embed_items | train | topk | nightly | forget_user | evaluate | tune
#   e.g. infra/spark/submit.sh migrate --date 2026-11-29 --config /etc/driftrec/prod.toml
#        infra/spark/submit.sh tune --config /etc/driftrec/prod.toml   (weekly; see infra/airflow/driftrec_tune.py)
# Environment:
#   SPARK_MASTER     (default: yarn)        DEPLOY_MODE (default: client)
#   DRIFTREC_ENV     packed venv from infra/spark/pack_env.sh (default: dist/driftrec-env.tar.gz)
#   DRIFTREC_CODE    where to zip the code when there is no packed venv (default: dist/driftrec-code.zip)
#   DELTA_PACKAGE    (default: io.delta:delta-spark_2.13:4.4.0, the version delta-spark pins in pyproject.toml)
#   SPARK_SUBMIT_EXTRA  further spark-submit options, e.g. "--conf spark.executor.instances=20"
# The job code never sets the master: it comes from here (or spark-defaults.conf).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
JOB="${1:?usage: submit.sh JOB [flags...]}"
shift
case "$JOB" in
  ingest|migrate|embed_items|train|topk|nightly|forget_user|evaluate|tune) ;;
  *) echo "submit.sh: unknown job '$JOB' (ingest, migrate, embed_items, train, topk, nightly, forget_user, evaluate, tune)" >&2; exit 2 ;;
esac
APP="$REPO/jobs/$JOB.py"
ENV_ARCHIVE="${DRIFTREC_ENV:-$REPO/dist/driftrec-env.tar.gz}"
ARGS=(--master "${SPARK_MASTER:-yarn}" --deploy-mode "${DEPLOY_MODE:-client}"
      --name "driftrec-$JOB" --packages "${DELTA_PACKAGE:-io.delta:delta-spark_2.13:4.4.0}")
if [ -f "$ENV_ARCHIVE" ]; then
  # Executors run Python from the unpacked archive; in client mode the driver uses the local one.
  ARGS+=(--archives "$ENV_ARCHIVE#environment" --conf spark.pyspark.python=./environment/bin/python)
else
  # No packed venv: the executors' Python has the dependencies but not driftrec, so ship the code itself.
  CODE_ZIP="${DRIFTREC_CODE:-$REPO/dist/driftrec-code.zip}"
  python3 "$REPO/infra/spark/pack_code.py" "$CODE_ZIP" >/dev/null
  ARGS+=(--py-files "$CODE_ZIP")
fi
# shellcheck disable=SC2086
exec spark-submit "${ARGS[@]}" ${SPARK_SUBMIT_EXTRA:-} "$APP" "$@"
