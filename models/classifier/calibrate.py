"""Temperature scaling per category, and the expected calibration error that judges it.

A served score is `sigmoid((logit + bias) / T)` per category.  `bias` undoes the prior shift
that `pos_weight` puts into a model's logits (the weighted loss is minimised at
`logit(p) + log(pos_weight)`, so `bias = -log(pos_weight)`); `T` is fitted on a held-out split
by minimising the negative log-likelihood.  A temperature only rescales logits, so ranking,
ROC and PR curves are unchanged while the probabilities become honest.  numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# log T is searched in [log 0.05, log 20]: beyond that a model is broken, not miscalibrated.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))
ECE_BINS = 15


def sigmoid(x: npt.ArrayLike) -> FloatArray:
    z = np.asarray(x, dtype=np.float64)
    out: FloatArray = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def bce(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean binary cross-entropy of logits, computed stably."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The T minimising the NLL of sigmoid(logits / T); golden-section search on log T.

    The NLL is unimodal in log T (convex in 1/T), so the search converges to the optimum.
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.size == 0 or np.all(y == y[0]):
        return 1.0  # nothing to calibrate against: leave the model as trained

    def nll(log_t: float) -> float:
        return bce(z / math.exp(log_t), y)

    lo, hi = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def expected_calibration_error(
    probs: npt.ArrayLike, labels: npt.ArrayLike, *, bins: int = ECE_BINS
) -> float:
    """Binary ECE: sum over equal-width probability bins of |B|/n * |mean(y) - mean(p)|."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            total += n / p.size * abs(float(y[sel].mean()) - float(p[sel].mean()))
    return total


def reliability_bins(
    probs: npt.ArrayLike, labels: npt.ArrayLike, *, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Per bin: mean predicted probability, observed frequency and count (reliability plot)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            out.append(
                {
                    "lo": b / bins,
                    "hi": (b + 1) / bins,
                    "mean_score": float(p[sel].mean()),
                    "observed": float(y[sel].mean()),
                    "count": n,
                }
            )
    return out


@dataclass(frozen=True, slots=True)
class Calibration:
    """Per-category prior correction and temperature, plus the evidence that they help."""

    categories: tuple[str, ...]
    bias: tuple[float, ...]
    temperature: tuple[float, ...]
    #: which split they were fitted on, and how many images it had
    split: str = ""
    n: int = 0
    #: ECE per category on the fitting split: raw sigmoid(logit), and calibrated
    ece_before: Mapping[str, float] = field(default_factory=dict)
    ece_after: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def identity(
        cls, categories: Sequence[str], bias: Sequence[float] | None = None
    ) -> Calibration:
        b = tuple(float(x) for x in (bias if bias is not None else [0.0] * len(categories)))
        return cls(tuple(categories), b, tuple(1.0 for _ in categories))

    def apply(self, logits: npt.ArrayLike) -> FloatArray:
        z = np.asarray(logits, dtype=np.float64)
        return sigmoid((z + np.asarray(self.bias)) / np.asarray(self.temperature))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "temperature scaling per category, after a pos_weight prior correction",
            "formula": "score = sigmoid((logit + bias) / temperature)",
            "split": self.split,
            "n": self.n,
            "per_category": {
                c: {
                    "bias": self.bias[i],
                    "temperature": self.temperature[i],
                    "ece_before": self.ece_before.get(c),
                    "ece_after": self.ece_after.get(c),
                }
                for i, c in enumerate(self.categories)
            },
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Calibration:
        per = raw["per_category"]
        cats = tuple(per)
        return cls(
            categories=cats,
            bias=tuple(float(per[c]["bias"]) for c in cats),
            temperature=tuple(float(per[c]["temperature"]) for c in cats),
            split=str(raw.get("split", "")),
            n=int(raw.get("n", 0)),
            ece_before={c: float(per[c]["ece_before"]) for c in cats
                        if per[c].get("ece_before") is not None},
            ece_after={c: float(per[c]["ece_after"]) for c in cats
                       if per[c].get("ece_after") is not None},
        )


def fit(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    categories: Sequence[str],
    *,
    bias: Sequence[float] | None = None,
    split: str = "",
) -> Calibration:
    """Fit one temperature per category on held-out logits (N x C) and 0/1 labels (N x C)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.shape != y.shape or z.ndim != 2 or z.shape[1] != len(categories):
        raise ValueError(
            f"logits {z.shape} and labels {y.shape} must both be N x {len(categories)}"
        )
    b = np.asarray(bias if bias is not None else np.zeros(len(categories)), dtype=np.float64)
    temps, before, after = [], {}, {}
    for j, c in enumerate(categories):
        corrected = z[:, j] + b[j]
        t = fit_temperature(corrected, y[:, j])
        temps.append(t)
        # "before" is the model as trained (pos_weight shift included): what serving raw
        # sigmoids would give; "after" is what is served.
        before[c] = expected_calibration_error(sigmoid(z[:, j]), y[:, j])
        after[c] = expected_calibration_error(sigmoid(corrected / t), y[:, j])
    return Calibration(
        categories=tuple(categories),
        bias=tuple(float(x) for x in b),
        temperature=tuple(temps),
        split=split,
        n=int(z.shape[0]),
        ece_before=before,
        ece_after=after,
    )
