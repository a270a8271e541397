#!/usr/bin/env bash
# A small real cluster on this machine: a Spark standalone master with two workers and a two-node Ray cluster,
# started from the installed pyspark (spark-class) and ray, bound to 127.0.0.1. The same setup tests/test_cluster.py
# runs the nightly against.
#   infra/local/cluster.sh start [DIR]   (default DIR: /tmp/driftrec-cluster; prints the submit command)
#   infra/local/cluster.sh stop  [DIR]   kills only the processes started from DIR (not every Ray on the machine)
# Environment: SPARK_MASTER_PORT (7077), SPARK_UI_PORT (8080), RAY_PORT (6379), WORKER_CORES (1), WORKER_MEMORY (2g)
set -euo pipefail
CMD="${1:?usage: cluster.sh start|stop [DIR]}"
DIR="${2:-/tmp/driftrec-cluster}"
SPARK_CLASS="$(command -v spark-class || true)"
[ -n "$SPARK_CLASS" ] || { echo "cluster.sh: spark-class not found: activate the driftrec venv first" >&2; exit 2; }
BIN="$(dirname "$SPARK_CLASS")"
MPORT="${SPARK_MASTER_PORT:-7077}" UI="${SPARK_UI_PORT:-8080}" RPORT="${RAY_PORT:-6379}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
free_port() { "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop() {
  [ -d "$DIR" ] || return 0
  # Every process in the sessions started below, and any naming DIR (Ray's daemons carry its temp dir).
  local sids pids
  sids="$(cat "$DIR"/*.sid 2>/dev/null | tr '\n' ' ')"
  for sig in TERM KILL; do
    pids="$(ps -eo pid=,sid=,args= | awk -v s=" $sids " -v d="$DIR" -v me=$$ \
      '$1 != me && (index(s, " " $2 " ") || index($0, d)) && !/awk/ {print $1}')"
    [ -n "$pids" ] && kill -s "$sig" $pids 2>/dev/null || true
    sleep 3
  done
  rm -f "$DIR"/*.sid
  echo "stopped the cluster of $DIR"
}

launch() {  # NAME CMD...: in its own session, so stop() finds all its children
  local name="$1"; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.sid"
}

case "$CMD" in
  start)
    mkdir -p "$DIR/logs" "$DIR/worker1" "$DIR/worker2"
    export SPARK_LOCAL_IP=127.0.0.1 SPARK_LOG_DIR="$DIR/logs" RAY_USAGE_STATS_ENABLED=0
    launch master "$BIN/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$MPORT" \
      --webui-port "$UI"
    sleep 5
    for i in 1 2; do
      SPARK_WORKER_DIR="$DIR/worker$i" launch "worker$i" "$BIN/spark-class" org.apache.spark.deploy.worker.Worker \
        --host 127.0.0.1 --cores "${WORKER_CORES:-1}" --memory "${WORKER_MEMORY:-2g}" --work-dir "$DIR/worker$i" \
        --webui-port "$(free_port)" "spark://127.0.0.1:$MPORT"
    done
    # The Ray nodes import the product's code (a cluster image would have it installed).
    PYTHONPATH="$REPO" launch ray-head "$BIN/ray" start --head --block --port="$RPORT" --temp-dir="$DIR/ray" \
      --num-cpus=1 --node-ip-address=127.0.0.1 --include-dashboard=false --disable-usage-stats
    sleep 10
    PYTHONPATH="$REPO" launch ray-node "$BIN/ray" start --block --address="127.0.0.1:$RPORT" --num-cpus=1 \
      --node-ip-address=127.0.0.1 --dashboard-agent-listen-port="$(free_port)" --disable-usage-stats
    cat <<EOF
started: Spark master spark://127.0.0.1:$MPORT (UI http://127.0.0.1:$UI), Ray at 127.0.0.1:$RPORT; logs in $DIR/logs
submit a night (the job never sets the master):
  SPARK_MASTER=spark://127.0.0.1:$MPORT infra/spark/submit.sh nightly --date YYYY-MM-DD --lakehouse /path/to/lake \\
    --set training.ray_address=\"127.0.0.1:$RPORT\"
stop: infra/local/cluster.sh stop $DIR
EOF
    ;;
  stop) stop ;;
  *) echo "cluster.sh: unknown command '$CMD' (start, stop)" >&2; exit 2 ;;
esac
