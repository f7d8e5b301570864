"""From bytes to a decision: ingest, scoring, policy, batch jobs, the API and the CLI."""

from __future__ import annotations

import os

# onnxruntime writes telemetry on import unless this is set first.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
