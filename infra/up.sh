#!/usr/bin/env bash
# `make up`: a local Prefect server and the MLflow tracking server, in the background.
#   logs: .run/prefect-server.log  .run/mlflow-server.log
#   pids: .run/prefect-server.pid  .run/mlflow-server.pid   (each the leader of its own process group)
#   ports: .run/prefect-server.port  .run/mlflow-server.port (a running server keeps its port)
#   env:  .run/env  (PREFECT_API_URL, COPYFLOW_TRACKING_URI: `source .run/env` to use the servers)
# `make down` (infra/down.sh) stops exactly these process groups and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${VENV:-.venv}/bin"
RUN=.run
# mlflow/server.env holds the tracking server's settings; a variable already set in the environment wins.
while IFS='=' read -r key value; do
  if [[ $key =~ ^[A-Z_]+$ && -z "${!key:-}" ]]; then export "$key=$value"; fi
done < <(grep -E '^[A-Z_]+=' mlflow/server.env)
HOST="${COPYFLOW_HOST:-${MLFLOW_HOST:-127.0.0.1}}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_DIR="${MLFLOW_DIR:-mlflow}"          # params.yaml paths.mlflow_dir: the embedded store the CLI uses
mkdir -p "$RUN" "$MLFLOW_DIR/artifacts"
MLFLOW_DIR="$(cd "$MLFLOW_DIR" && pwd)"

export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
# copyflow uses no MLflow server-side jobs (GenAI judges); without them the server is 2 processes, not 10.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# The server's own database lives with the run files, not in ~/.prefect.
export PREFECT_HOME="$PWD/$RUN/prefect-home"

running() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

port_free() {  # port_free PORT: nothing listens on HOST:PORT
  "$BIN/python" -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))" "$HOST" "$1" 2>/dev/null
}

# A server that is already running keeps the port it was started on (.run/NAME.port): .run/env
# must name where it listens, not a port asked for now where nothing does.
keep_port() {  # keep_port NAME VAR: set VAR to the running server's port, if it has one
  local name=$1 var=$2 recorded
  running "$name" && [[ -f "$RUN/$name.port" ]] || return 0
  recorded=$(cat "$RUN/$name.port")
  if [[ $recorded != "${!var}" ]]; then
    echo "$name is already running on port $recorded ($var=${!var} asked): keeping it; \`make down\` first to move it" >&2
  fi
  printf -v "$var" '%s' "$recorded"
}

require_port() {  # require_port NAME PORT: refuse before anything starts if another process holds it
  local name=$1 port=$2
  running "$name" && return 0
  if ! port_free "$port"; then
    # Another checkout's server (or anything else) would answer our health check, and this
    # checkout's runs would go to its store: refuse instead.
    echo "$name: port $port on $HOST is already in use by another process; nothing was started. Stop it or pick another port (PREFECT_PORT=... MLFLOW_PORT=... make up)" >&2
    exit 1
  fi
}

start() {  # start NAME PORT CMD...: detached in its own session, so its pid is its process group id
  local name=$1 port=$2; shift 2
  if running "$name"; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"), port $port)"
    return
  fi
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "$port" >"$RUN/$name.port"
  echo "$name started (pid $!, port $port, log $RUN/$name.log)"
}

wait_healthy() {  # wait_healthy NAME URL
  local name=$1 url=$2
  for _ in $(seq 1 180); do
    if "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null; then
      if running "$name"; then
        echo "$name healthy at $url"
        return
      fi
      echo "$name answered at $url but our process exited: another server holds the port; last log lines:" >&2
      tail -n 30 "$RUN/$name.log" >&2
      exit 1
    fi
    if ! running "$name"; then
      echo "$name exited; last log lines:" >&2
      tail -n 30 "$RUN/$name.log" >&2
      exit 1
    fi
    sleep 1
  done
  echo "$name not healthy after 180s; see $RUN/$name.log" >&2
  exit 1
}

# A profile with a registry of its own (shop, obd: another shop) must not use the shared server:
# it keeps its embedded store, named by its own variable, so the worker runs its deployments too.
# Worked out before any server starts: a broken params.yaml stops here, with nothing left running.
OWN_STORES=""
if [[ -f params.yaml ]]; then
  OWN_STORES="$("$BIN/python" - <<'PY'
import sys
from pathlib import Path

from components.config import config_error_text, load_config, read_params
from components.tracking import profile_uri_env

name = "?"
try:  # a params error in one line, as the CLI gives it, not a traceback
    for name in read_params(Path("params.yaml")).get("profiles") or {}:
        cfg = load_config("params.yaml", name)
        if cfg.own_store and not cfg.tracking.uri:
            print(f"export {profile_uri_env(name)}=sqlite:///{(Path(cfg.paths.mlflow_dir) / 'mlflow.db').resolve()}")
except (FileNotFoundError, ValueError) as exc:
    sys.exit(f"make up: {config_error_text(exc, 'params.yaml', name)}\nnothing was started")
PY
)"
fi

keep_port prefect-server PREFECT_PORT
keep_port mlflow-server MLFLOW_PORT
require_port prefect-server "$PREFECT_PORT"
require_port mlflow-server "$MLFLOW_PORT"

start prefect-server "$PREFECT_PORT" "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
# MLFLOW_WORKERS=1 (server.env): one server process owns the sqlite store (sqlite does not like concurrent writers).
# --default-artifact-root: experiments created through the server store artifacts under the same
# file:// folder the embedded mode uses, so the CLI reads them with or without the server (a
# proxied mlflow-artifacts:/ location is readable only over http). --artifacts-destination still
# serves experiments a proxied server created earlier.
start mlflow-server "$MLFLOW_PORT" "$BIN/mlflow" server \
  --backend-store-uri "sqlite:///$MLFLOW_DIR/mlflow.db" \
  --default-artifact-root "file://$MLFLOW_DIR/artifacts" \
  --artifacts-destination "$MLFLOW_DIR/artifacts" \
  --host "$HOST" --port "$MLFLOW_PORT" --workers "${MLFLOW_WORKERS:-1}"

cat >"$RUN/env" <<ENV
export PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api
export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
export COPYFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
ENV
[[ -z "$OWN_STORES" ]] || echo "$OWN_STORES" >>"$RUN/env"

wait_healthy prefect-server "http://$HOST:$PREFECT_PORT/api/health"
wait_healthy mlflow-server "http://$HOST:$MLFLOW_PORT/health"
echo
echo "Prefect UI: http://$HOST:$PREFECT_PORT    MLflow UI: http://$HOST:$MLFLOW_PORT"
echo "Use them from this shell:  source $RUN/env"
