"""Scorers: what turns decoded images into per-category scores.  Knows nothing of queues or HTTP."""

from __future__ import annotations

import os

# onnxruntime writes telemetry on import unless this is set first; every entry point imports us.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
