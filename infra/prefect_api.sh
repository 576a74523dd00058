# Sourced by deploy.sh and worker.sh: the Prefect server they talk to must be set and answering.
# Without this, `prefect worker start` with no PREFECT_API_URL, or either script after `make down`
# with a PREFECT_API_URL still exported in the shell, ended in a 100-line traceback.
require_prefect_api() {  # require_prefect_api PYTHON
  local python=$1
  if [[ -z "${PREFECT_API_URL:-}" ]]; then
    echo "PREFECT_API_URL is not set: run \`make up\` first (or point PREFECT_API_URL at your server)" >&2
    exit 1
  fi
  # Any HTTP answer counts (Prefect Cloud or a gateway may answer /health with 401 or 404);
  # only no answer at all (refused, unresolvable, timed out) stops here.
  if ! "$python" -c "
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip('/') + '/health', timeout=5)
except urllib.error.HTTPError:
    pass" "$PREFECT_API_URL" 2>/dev/null; then
    echo "the Prefect server at PREFECT_API_URL=$PREFECT_API_URL does not answer: start it with \`make up\` (\`make down\` stopped it), or point PREFECT_API_URL at a running server" >&2
    exit 1
  fi
}
