#!/usr/bin/env bash
# The two set-up commands of the README:
#   scripts/dev.sh serve   create .venv if missing, then start Clarion single-process (no Redis)
#   scripts/dev.sh test    create .venv if missing, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

ensure_venv() {
  if [ ! -x .venv/bin/python ] || [ ! -f .venv/.clarion-installed ] \
     || [ requirements/dev.txt -nt .venv/.clarion-installed ] || [ requirements/runtime.txt -nt .venv/.clarion-installed ] \
     || [ pyproject.toml -nt .venv/.clarion-installed ] || [ client/pyproject.toml -nt .venv/.clarion-installed ] \
     || ! .venv/bin/python -c 'import clarion_client' 2>/dev/null; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PYTHON=.venv/bin/python scripts/install.sh --dev --editable
    touch .venv/.clarion-installed
  fi
}

command=${1:-}
shift || true
case "$command" in
  serve)
    ensure_venv
    export SERVERLESS=${SERVERLESS:-true}
    # With no model configured, use the team's sentiment model when it sits beside the repo
    # (offline machines), otherwise the hub default.
    if [ -z "${MODEL_DIR:-}${BUCKET_NAME:-}${HUB_MODEL_NAME:-}" ] && [ -f ../shared/models/minilm-sst2/config.json ]; then
      export MODEL_DIR="$repo/../shared/models/minilm-sst2"
    fi
    exec .venv/bin/clarion serve "$@"
    ;;
  test)
    ensure_venv
    # Two test processes, one file each at a time (a file's servers and workers are started once):
    # most tests wait on the servers, workers and Redis they start. `-n 0` runs in this process.
    exec .venv/bin/python -m pytest -n "${TEST_PROCESSES:-2}" --dist loadfile "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh serve | test [pytest arguments]" >&2
    exit 2
    ;;
esac
