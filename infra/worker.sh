#!/usr/bin/env bash
# `make worker`: run the deployments' flow runs (scheduled retrains, promote/rollback clicks)
# in subprocesses of this checkout, on the local process work pool. Foreground; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
[[ -f .run/env ]] && source .run/env
source infra/prefect_api.sh
require_prefect_api "$BIN/python"
exec "$BIN/prefect" worker start --pool "${COPYFLOW_POOL:-copyflow-local}" --type process
