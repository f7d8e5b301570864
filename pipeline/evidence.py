"""What a model's result carries beside its scores, as plain rows: the evidence (labels and
boxes) and the shadow models' scores.  The API's orchestrator (through `pipeline.routing`) and
the batch workers both build them here, so a decision's reasons read the same whichever path
made it; light imports, as batch workers load this module."""

from __future__ import annotations

from typing import Any

from models.base import ScoreResult
from models.classifier.shadow import shadow_scores


def evidence_rows(result: ScoreResult) -> list[dict[str, Any]]:
    """The evidence as the model reported it (rounded only in the statement of reasons)."""
    return [{"category": e.category, "label": e.label, "score": e.score,
             "box": list(e.box) if e.box else None} for e in result.evidence]


def shadow_rows(result: ScoreResult) -> list[dict[str, Any]]:
    """The shadow models' scores a result carries (models.classifier.shadow), as plain rows;
    `pipeline.routing.route` rounds them for the record."""
    return [{"model_version": r.model_version, "scores": dict(r.scores), "error": r.error}
            for r in shadow_scores(result)]
