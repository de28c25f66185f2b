#!/usr/bin/env bash
# The MLflow dashboard and tracking server of this project, bound to 127.0.0.1 by default.
#
#   scripts/mlflow-server.sh ui      the dashboard on the embedded store <results>/mlflow.db
#                                    (foreground, Ctrl-C stops it; what `make dashboard` runs)
#   scripts/mlflow-server.sh start   one tracking server in the background for cluster runs:
#                                    jobs log over HTTP (export MLFLOW_TRACKING_URI=http://HOST:PORT
#                                    or set tracking.uri); PID in <results>/mlflow-server.pid
#   scripts/mlflow-server.sh stop    stop that server (by its PID file only)
#   scripts/mlflow-server.sh status
#
# Environment: RESULTS (results), PORT (5000), HOST (127.0.0.1), WORKERS (1), VENV (.venv).
# The server has no authentication: keep HOST at 127.0.0.1 and reach it from elsewhere through
# an SSH tunnel (ssh -L 5000:127.0.0.1:5000 login-node); bind to another address only on a
# trusted network.
set -euo pipefail
cd "$(dirname "$0")/.."

RESULTS=${RESULTS:-results}
PORT=${PORT:-5000}
HOST=${HOST:-127.0.0.1}
WORKERS=${WORKERS:-1}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
MLFLOW=("$PY" -m mlflow)
export MLFLOW_DISABLE_TELEMETRY=true

mkdir -p "$RESULTS"
results=$(cd "$RESULTS" && pwd)
store="sqlite:///$results/mlflow.db"
pidfile="$results/mlflow-server.pid"
logfile="$results/mlflow-server.log"
args=(--backend-store-uri "$store" --host "$HOST" --port "$PORT" --workers "$WORKERS")

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
  ui)
    # MLflow 3.17's UI opens in its GenAI view (a browser-local setting, whatever the
    # experiment's kind); its workflowType URL parameter opens "Model training" instead, on
    # the runs table of the experiment that ran last.
    page="#/?workflowType=machine_learning"
    if [ -f "$results/mlflow.db" ]; then
      page=$("$PY" - "$store" 2>/dev/null <<'PYEOF' || echo "$page"
import sys
from mlflow.tracking import MlflowClient
exps = [e for e in MlflowClient(sys.argv[1]).search_experiments() if e.name != "Default"]
last = max(exps, key=lambda e: e.last_update_time or 0, default=None)
print(f"#/experiments/{last.experiment_id}/runs?workflowType=machine_learning" if last
      else "#/?workflowType=machine_learning")
PYEOF
)
    fi
    echo "MLflow dashboard on $store: http://$HOST:$PORT/$page (Ctrl-C stops it)"
    exec "${MLFLOW[@]}" ui "${args[@]}"
    ;;
  start)
    if running; then
      echo "mlflow server already running (PID $(cat "$pidfile")): http://$HOST:$PORT"
      exit 0
    fi
    # artifacts uploaded over HTTP land beside the store, as with the embedded one
    setsid "${MLFLOW[@]}" server "${args[@]}" --artifacts-destination "$results/mlartifacts" \
      >"$logfile" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 120); do
      if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
          "http://$HOST:$PORT/health" 2>/dev/null; then
        echo "mlflow server PID $(cat "$pidfile"): export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
        exit 0
      fi
      running || { echo "mlflow server failed to start; see $logfile" >&2; rm -f "$pidfile"; exit 1; }
      sleep 1
    done
    echo "mlflow server did not answer on http://$HOST:$PORT within 120 s; see $logfile" >&2
    exit 1
    ;;
  stop)
    if running; then
      pid=$(cat "$pidfile")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"  # its session: gunicorn/uvicorn workers too
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      echo "mlflow server (PID $pid) stopped"
    else
      echo "no mlflow server running (no live PID in $pidfile)"
    fi
    rm -f "$pidfile"
    ;;
  status)
    if running; then echo "running, PID $(cat "$pidfile"), http://$HOST:$PORT"; else echo "not running"; exit 1; fi
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
