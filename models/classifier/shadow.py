"""Shadow scoring: candidate models score the same traffic as the active one, for comparison.

`ShadowScorer` is a Scorer whose results are the active model's, untouched: outcomes can only
ever come from the active model.  Each result is a `ShadowedScoreResult`, a ScoreResult with
one extra field, `shadow`: the shadow models' scores (or the error a shadow raised, because a
failing shadow must never fail the upload).  Store `shadow` beside the decision to compare.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.base import RGBImage, Scorer, ScoreResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowScores:
    """What one shadow model said about one image."""

    model_version: str
    scores: Mapping[str, float] = field(default_factory=dict)
    #: the error code when the shadow failed on this batch (its scores are then empty)
    error: str | None = None
    #: the shadow's time for the whole batch, for capacity planning
    batch_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version,
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
                "error": self.error, "batch_ms": round(self.batch_ms, 2)}


@dataclass(frozen=True, slots=True)
class ShadowedScoreResult(ScoreResult):
    """The active model's result, plus what each shadow model scored for the same image."""

    shadow: tuple[ShadowScores, ...] = ()


def shadow_scores(result: ScoreResult) -> tuple[ShadowScores, ...]:
    """The shadow scores a result carries (none for a plain ScoreResult)."""
    return result.shadow if isinstance(result, ShadowedScoreResult) else ()


class ShadowScorer(Scorer):
    """The active scorer, with shadows run on every batch and recorded, never consulted."""

    name: str
    version: str
    categories: tuple[str, ...]

    def __init__(self, active: Scorer, shadows: Sequence[Scorer]) -> None:
        if any(s.version == active.version for s in shadows):
            raise ValueError("a model cannot shadow itself")
        self.active = active
        self.shadows = tuple(shadows)
        self.name = active.name
        self.version = active.version
        self.categories = active.categories

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        results = self.active.score(images)
        per_shadow: list[list[ShadowScores]] = []
        for shadow in self.shadows:
            started = time.perf_counter()
            try:
                shadow_results = shadow.score(images)
            except Exception as exc:  # a shadow is an experiment: it never fails the upload
                code = getattr(exc, "code", type(exc).__name__)
                logger.warning("shadow model failed",
                               extra={"model_version": shadow.version, "error": code})
                ms = (time.perf_counter() - started) * 1000
                per_shadow.append([ShadowScores(shadow.version, {}, str(code), ms)] * len(images))
                continue
            ms = (time.perf_counter() - started) * 1000
            per_shadow.append(
                [ShadowScores(shadow.version, dict(r.scores), None, ms) for r in shadow_results]
            )
        return [
            ShadowedScoreResult(
                model_version=r.model_version,
                scores=r.scores,
                evidence=r.evidence,
                shadow=tuple(col[i] for col in per_shadow),
            )
            for i, r in enumerate(results)
        ]
