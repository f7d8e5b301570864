#!/usr/bin/env bash
# `make run`: the main job on the bundled samples (scripts/demo.sh), then the services people
# use, side by side on 127.0.0.1: Label Studio for reviewers and the REST API for the platform.
# LOOKFIRST_RUN_SERVICES=0 stops after the main job.  Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LF="$VENV/bin/lookfirst"
PY="$VENV/bin/python"
export ORT_DISABLE_TELEMETRY=1
export LOOKFIRST_DATA_DIR=${LOOKFIRST_DATA_DIR:-var/demo}
export LOOKFIRST_POLICY_PATH=${LOOKFIRST_POLICY_PATH:-pipeline/policies/demo.yaml}
export LOOKFIRST_NOTICE_PERIOD_HOURS=${LOOKFIRST_NOTICE_PERIOD_HOURS:-0}

bash scripts/demo.sh
[ "${LOOKFIRST_RUN_SERVICES:-1}" = "0" ] && exit 0

LS_PORT=${LABELSTUDIO_PORT:-8080}
API_PORT=${LOOKFIRST_PORT:-8000}
export LOOKFIRST_LABELSTUDIO_URL="http://127.0.0.1:$LS_PORT"
export LOOKFIRST_LABELSTUDIO_PUBLIC_API_URL="http://127.0.0.1:$API_PORT"
export LOOKFIRST_LABELSTUDIO_TOKEN=${LOOKFIRST_LABELSTUDIO_TOKEN:-$("$PY" -c '
from pipeline.labelstudio.server import token_for
from pipeline.settings import Settings
print(token_for(Settings().signing_key))')}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; }
trap cleanup EXIT INT TERM

printf '\n\033[1m== 10. Label Studio for reviewers (first start installs it: a few minutes)\033[0m\n'
LABELSTUDIO_PORT=$LS_PORT bash scripts/labelstudio.sh > "$LOOKFIRST_DATA_DIR/labelstudio.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  grep -q "^Label Studio: " "$LOOKFIRST_DATA_DIR/labelstudio.log" 2>/dev/null && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "Label Studio did not start; see $LOOKFIRST_DATA_DIR/labelstudio.log"; exit 3
  fi
  sleep 1
done
"$LF" labelstudio setup
"$LF" labelstudio map admin@lookfirst.local dana >/dev/null
"$LF" labelstudio sync --once

printf '\n\033[1m== 11. the REST API (an admin key for you, shown once)\033[0m\n'
"$LF" keys create --scope admin --name make-run
"$LF" labelstudio sync --interval 3 > "$LOOKFIRST_DATA_DIR/labelstudio-sync.log" 2>&1 &
pids+=($!)
cat <<MSG

  API            http://127.0.0.1:$API_PORT/docs   (metrics: /metrics)
  Label Studio   $LOOKFIRST_LABELSTUDIO_URL   login admin@lookfirst.local / dev-only-not-a-secret
                 (acts as reviewer 'dana'; verdicts come back by webhook, and the poller)
  Ctrl-C stops everything.
MSG
"$LF" serve --port "$API_PORT"
