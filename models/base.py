"""The scorer seam: a batch of decoded RGB images in, per-category scores and evidence out."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import final

import numpy as np
import numpy.typing as npt

from models.errors import BadModelInput

RGBImage = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One thing the model saw: a detector box or a classifier label, mapped to a category."""

    category: str
    label: str
    score: float
    # (x1, y1, x2, y2) in the original image's pixels; None for whole-image classifiers.
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Scores for one image.  `model_version` is name@sha256-prefix and travels with the scores."""

    model_version: str
    scores: Mapping[str, float]
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)


class Scorer(abc.ABC):
    """A model backend.  Load once in __init__; `score` takes a batch and returns a batch."""

    #: e.g. "nudenet-320n"
    name: str
    #: name plus the weights' digest, e.g. "nudenet-320n@sha256:1a2b3c4d5e6f"
    version: str
    #: every category this scorer reports, in a stable order (every result has all of them)
    categories: tuple[str, ...]

    @final
    def score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        for i, image in enumerate(images):
            if not (
                isinstance(image, np.ndarray)
                and image.dtype == np.uint8
                and image.ndim == 3
                and image.shape[2] == 3
                and image.shape[0] > 0
                and image.shape[1] > 0
            ):
                raise BadModelInput(f"image {i} is not an H x W x 3 uint8 RGB array")
        if not images:
            return []
        results = self._score(images)
        if len(results) != len(images):  # pragma: no cover - a backend bug
            raise RuntimeError(f"{type(self).__name__} returned {len(results)} for {len(images)}")
        return results

    @abc.abstractmethod
    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        """Score a non-empty batch of validated images."""
