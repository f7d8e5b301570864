#!/usr/bin/env bash
# Create Label Studio's own venv (pinned 1.23.x) if missing, then start it on 127.0.0.1.
# Install measured here: ~153 s from the local mirror on 2 cores; first start ~60 s, restart ~6 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LABELSTUDIO_VENV:-.venv-labelstudio}"
if [ ! -x "$VENV/bin/label-studio" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "label-studio>=1.23,<1.24"
fi
exec .venv/bin/lookfirst labelstudio start --venv "$VENV" --port "${LABELSTUDIO_PORT:-8080}"
