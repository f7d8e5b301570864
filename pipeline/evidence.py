"""What a model's result carries beside its scores, as plain rows: the evidence (labels and
boxes) and the shadow models' scores.  The API's orchestrator and the batch predictor both
record them through these, so a decision's reasons read the same whichever path made it."""

from __future__ import annotations

from typing import Any

from models.base import ScoreResult


def evidence_rows(result: ScoreResult) -> list[dict[str, Any]]:
    """The evidence as the model reported it (rounded only in the statement of reasons)."""
    return [{"category": e.category, "label": e.label, "score": e.score,
             "box": list(e.box) if e.box else None} for e in result.evidence]


def shadow_rows(result: ScoreResult) -> list[dict[str, Any]]:
    """Shadow models' scores, when the scorer runs any (models.classifier.shadow); read by
    duck type so the scoring paths do not import the torch-side package."""
    rows = getattr(result, "shadow", ())
    return [{"model_version": r.model_version,
             "scores": {k: round(float(v), 4) for k, v in r.scores.items()},
             "error": r.error} for r in rows]
