#!/usr/bin/env bash
# `make down`: stop exactly the servers `make up` started (their process groups, by recorded pid).
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=.run

stop() {  # stop NAME PATTERN: only if the recorded pid is still that program (pids get reused)
  local name=$1 pattern=$2 pidfile="$RUN/$1.pid"
  if [[ ! -f "$pidfile" ]]; then
    echo "$name: not running (no $pidfile)"
    return
  fi
  local pid
  pid=$(cat "$pidfile")
  if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"; then
    # The leader may have died alone (kill -9) while its workers still hold the port.
    local members
    members=$(pgrep -g "$pid" -f -- "$pattern" | tr '\n' ' ')
    if [[ -n "$members" ]]; then
      echo "$name: leader $pid is gone; stopping the rest of its process group ($members)"
      kill -TERM -- "-$pid" 2>/dev/null
      sleep 2
      kill -KILL -- "-$pid" 2>/dev/null
    else
      echo "$name: pid $pid is gone (or is no longer $pattern); removing $pidfile"
    fi
    rm -f "$pidfile" "$RUN/$name.port"
    return
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: still running after 15s, sending KILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
  fi
  rm -f "$pidfile" "$RUN/$name.port"
  echo "$name stopped (pid $pid)"
}

stop prefect-server "prefect"
stop mlflow-server "mlflow"
rm -f "$RUN/env"
