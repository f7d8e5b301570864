"""Evaluation metrics against brute-force definitions, and the policy's firing rule."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from models.classifier.evaluate import (
    ScoredSet,
    at_threshold,
    average_precision,
    evaluate,
    fires,
    read_summary,
    roc_auc,
    roc_curve,
    segments,
)
from models.errors import InvalidArgument


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pair_counting_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.4).astype(int)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s))


def test_roc_edges() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(roc_auc(np.ones(4), np.arange(4.0)))
    fpr, tpr, _ = roc_curve(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


def test_average_precision_by_hand() -> None:
    # ranked: 1 (P=1), 0, 1 (P=2/3): AP = 0.5 * 1 + 0.5 * 2/3
    y = np.array([1, 0, 1])
    s = np.array([0.9, 0.8, 0.7])
    assert average_precision(y, s) == pytest.approx(0.5 + 1 / 3)


def test_fires_like_the_policy_engine() -> None:
    s = np.array([0.5, 0.49, 1.0, 0.7])
    t = np.array([0.5, 0.5, 1.0, 0.65])
    # score == threshold fires; a threshold of 1.0 never fires, even on a perfect score
    assert fires(s, t).tolist() == [True, False, False, True]
    counts = at_threshold([1, 1, 0, 0], [True, False, True, False])
    assert (counts.tp, counts.fn, counts.fp, counts.tn) == (1, 1, 1, 1)
    assert counts.precision == counts.recall == counts.f1 == counts.fpr == 0.5


def test_segments_skip_identifier_like_fields() -> None:
    ctx = [{"medical_sharing": i % 3 == 0, "upload": f"u{i}"} for i in range(30)]
    names = [n for n, _ in segments(ctx)]
    assert names == ["all", "medical_sharing=false", "medical_sharing=true"]


def test_evaluate_reports_the_medical_headline() -> None:
    y = np.array([[0], [0], [1], [0], [0], [1]], dtype=float)
    s = np.array([[0.6], [0.2], [0.9], [0.6], [0.1], [0.7]])
    medical = [False, False, False, True, True, True]
    # medical sharing raises the review threshold from 0.5 to 0.65
    t = np.array([[0.5 + 0.15 * m] for m in medical])
    scored = ScoredSet(("c",), s, y, t, [{"medical_sharing": m} for m in medical], "m@x", "test")
    result = evaluate(scored)
    head = {h["segment"]: h for h in result["headline"]}
    assert head["medical_sharing=false"]["benign_flagged"] == 1  # 0.6 >= 0.5
    assert head["medical_sharing=true"]["benign_flagged"] == 0  # 0.6 < 0.65
    assert result["per_category"]["c"]["thresholds_in_force"] == [0.5, 0.65]


def test_an_evaluation_summary_drops_the_curves_and_refuses_what_is_not_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({
        "model_version": "m@sha256:ab", "split": "test", "n": 3, "macro": {"ece": 0.1},
        "headline": [], "per_category": {"c": {"precision": 0.5, "curves": {"pr": [1, 2]}}},
        "notes": {"data": "x"},
    }), encoding="utf-8")
    assert read_summary(path) == {
        "model_version": "m@sha256:ab", "split": "test", "n": 3, "macro": {"ece": 0.1},
        "headline": [], "per_category": {"c": {"precision": 0.5}},
    }
    for text in ("{not json", "[1, 2]"):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidArgument) as exc:
            read_summary(path)
        assert exc.value.code == "input.invalid"
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_summary(tmp_path / "absent.json")
