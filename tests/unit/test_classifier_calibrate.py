"""Temperature scaling and ECE, on logits whose true calibration is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.classifier.calibrate import (
    Calibration,
    bce,
    expected_calibration_error,
    fit,
    fit_temperature,
    sigmoid,
)


def draw(rng: np.random.Generator, n: int, *, scale: float, shift: float = 0.0):
    """Labels drawn from sigmoid(z) (so z is perfectly calibrated); the model says
    scale * z + shift: over-confident for scale > 1, under-confident below 1."""
    z = rng.normal(0.0, 2.0, size=n)
    y = (rng.random(n) < sigmoid(z)).astype(np.float64)
    return scale * z + shift, y


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_fit_temperature_recovers_the_true_scale(scale: float) -> None:
    logits, y = draw(np.random.default_rng(1), 20_000, scale=scale)
    assert fit_temperature(logits, y) == pytest.approx(scale, rel=0.06)


def test_calibration_lowers_ece_on_a_separate_held_out_draw() -> None:
    rng = np.random.default_rng(7)
    fit_logits, fit_y = draw(rng, 4_000, scale=3.0)  # an over-confident model
    held_logits, held_y = draw(rng, 4_000, scale=3.0)  # fitted on one draw, judged on another
    t = fit_temperature(fit_logits, fit_y)
    before = expected_calibration_error(sigmoid(held_logits), held_y)
    after = expected_calibration_error(sigmoid(held_logits / t), held_y)
    assert before > 0.08
    assert after < before / 3
    assert bce(held_logits / t, held_y) < bce(held_logits, held_y)


def test_prior_bias_undoes_pos_weight_shift_before_the_temperature() -> None:
    rng = np.random.default_rng(3)
    pos_weight = 4.0
    # A model trained with pos_weight w is minimised at logit(p) + log(w).
    logits, y = draw(rng, 20_000, scale=1.0, shift=math.log(pos_weight))
    cal = fit(logits[:, None], y[:, None], ["c"], bias=[-math.log(pos_weight)], split="calib")
    assert cal.temperature[0] == pytest.approx(1.0, rel=0.06)
    assert cal.ece_after["c"] < cal.ece_before["c"] / 3
    assert np.allclose(cal.apply(logits[:, None])[:, 0], sigmoid(logits - math.log(pos_weight)) ,
                       atol=0.02)


def test_single_class_leaves_the_model_alone() -> None:
    assert fit_temperature(np.array([1.0, 2.0, 3.0]), np.ones(3)) == 1.0


def test_ece_is_zero_when_frequencies_match_scores() -> None:
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    assert expected_calibration_error(p, y) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(4), np.zeros(4)) == pytest.approx(1.0)


def test_calibration_round_trips_through_its_dict() -> None:
    logits, y = draw(np.random.default_rng(0), 500, scale=2.0)
    cal = fit(np.stack([logits, -logits], 1), np.stack([y, 1 - y], 1), ["a", "b"],
              bias=[0.1, -0.2], split="val")
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    with pytest.raises(ValueError):
        fit(np.zeros((3, 2)), np.zeros((3, 1)), ["a", "b"])
