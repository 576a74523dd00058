#!/usr/bin/env bash
# `make deploy`: register the deployments of prefect.yaml (retrain nightly, promote, rollback, prune nightly)
# on the Prefect server of `make up` (or whatever PREFECT_API_URL points at).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
POOL="${COPYFLOW_POOL:-copyflow-local}"
[[ -f .run/env ]] && source .run/env
source infra/prefect_api.sh
require_prefect_api "$BIN/python"
"$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$POOL" --type process
"$BIN/prefect" --no-prompt deploy --all --prefect-file prefect.yaml
