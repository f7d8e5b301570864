"""The agreement bar for faster NudeNet variants, on score results made by hand."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from models.base import ScoreResult
from models.errors import ModelError
from models.nudenet_fast import BAR, FP32, INT8_MIXED, candidates, detector_agreement


def r(**scores: float) -> ScoreResult:
    base = dict.fromkeys(("nudity.explicit", "person.face"), 0.0)
    return ScoreResult(model_version="m", scores={**base, **scores})


def outcome(scores: Mapping[str, float]) -> str:
    return "review" if scores.get("nudity.explicit", 0.0) >= 0.45 else "allow"


THRESHOLDS = {"nudity.explicit": [0.45]}


def test_identical_results_pass() -> None:
    ref = [r(), r(**{"person.face": 0.7}), r(**{"nudity.explicit": 0.9})]
    found = detector_agreement(ref, ref, outcome=outcome, thresholds=THRESHOLDS)
    assert found.identical_category_sets == 1.0 and found.outcome_flips == 0
    assert found.n_with_detections == 2 and found.meets(BAR)


def test_a_flip_near_a_threshold_is_tolerated_one_far_from_it_is_not() -> None:
    ref = [r(**{"nudity.explicit": 0.44})] + [r() for _ in range(99)]
    near = [r(**{"nudity.explicit": 0.47})] + [r() for _ in range(99)]
    found = detector_agreement(ref, near, outcome=outcome, thresholds=THRESHOLDS)
    assert found.outcome_flips == 1 and found.outcome_flips_outside_margin == 0
    assert found.meets(BAR)
    far = [r(**{"nudity.explicit": 0.9})] + [r() for _ in range(99)]
    ref_far = [r(**{"nudity.explicit": 0.3})] + [r() for _ in range(99)]
    found = detector_agreement(ref_far, far, outcome=outcome, thresholds=THRESHOLDS)
    assert found.outcome_flips_outside_margin == 1 and not found.meets(BAR)


def test_category_sets_below_the_bar_fail() -> None:
    ref = [r(**{"person.face": 0.6}) for _ in range(100)]
    cand = [r() for _ in range(3)] + ref[3:]  # three faces lost: 97 % identical
    found = detector_agreement(ref, cand, outcome=outcome, thresholds=THRESHOLDS)
    assert found.identical_category_sets == pytest.approx(0.97)
    assert not found.meets(BAR)
    assert found.max_abs_diff == pytest.approx(0.6)


def test_candidates_end_with_fp32() -> None:
    assert candidates("auto")[-1] == FP32
    assert candidates(INT8_MIXED) == (INT8_MIXED, FP32)
    assert candidates(FP32) == (FP32,)
    with pytest.raises(ModelError):
        candidates("int4")
