"""Shadow models score the same images and are recorded, never consulted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from models.base import RGBImage, Scorer, ScoreResult
from models.classifier.shadow import ShadowedScoreResult, ShadowScorer, shadow_scores
from models.errors import ModelError


class Fixed(Scorer):
    def __init__(self, version: str, value: float, *, fail: bool = False) -> None:
        self.name, self.version, self.categories = version.split("@")[0], version, ("c",)
        self.value, self.fail, self.calls = value, fail, 0

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        self.calls += 1
        if self.fail:
            raise ModelError("broken shadow")
        return [ScoreResult(self.version, {"c": self.value}) for _ in images]


IMAGES = [np.zeros((4, 4, 3), dtype=np.uint8)] * 3


def test_results_are_the_active_models_with_shadow_scores_beside() -> None:
    active, shadow = Fixed("a@1", 0.9), Fixed("b@2", 0.1)
    results = ShadowScorer(active, [shadow]).score(IMAGES)
    assert [r.scores for r in results] == [{"c": 0.9}] * 3
    assert all(r.model_version == "a@1" for r in results)
    assert all(isinstance(r, ShadowedScoreResult) for r in results)
    assert [s.scores for r in results for s in shadow_scores(r)] == [{"c": 0.1}] * 3
    assert shadow.calls == 1  # one batch call, the same images


def test_a_failing_shadow_never_fails_the_upload() -> None:
    results = ShadowScorer(Fixed("a@1", 0.3), [Fixed("b@2", 0.0, fail=True)]).score(IMAGES)
    assert [r.scores["c"] for r in results] == [0.3] * 3
    (s,) = shadow_scores(results[0])
    assert s.error == "model.error" and s.scores == {}
    assert shadow_scores(ScoreResult("x@1", {"c": 0.0})) == ()


def test_a_model_cannot_shadow_itself() -> None:
    with pytest.raises(ValueError):
        ShadowScorer(Fixed("a@1", 0.3), [Fixed("a@1", 0.3)])
