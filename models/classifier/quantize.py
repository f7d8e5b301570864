"""Optional int8 quantisation of an ONNX model, with its agreement against fp32 measured.

Static QDQ quantisation (uint8 activations, int8 per-channel weights) calibrated on
representative inputs; the first convolution and everything after the last one (head,
calibration, sigmoid) stay fp32, because they decide the scores near the thresholds.  A
quantised model is never trusted on faith: `agreement` compares it with the fp32 model on
held-out inputs (identical outcomes, max score difference) and the figures go into its card.
`quantize_onnx` works on any single-input ONNX model (NudeNet's detector included); the
classifier helper writes a new model directory with its own card and sha256.  No torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import sys
import tempfile
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import RGBImage
from models.classifier.card import CARD_FILE, MODEL_FILE, ClassifierCard, OnnxFile, locate
from models.errors import ModelDependencyMissing, ModelError

logger = logging.getLogger(__name__)

OutcomeFn = Callable[[Mapping[str, float]], Hashable]


@dataclass(frozen=True)
class Agreement:
    n: int
    #: share of images whose outcome is identical under both models
    outcome_agreement: float
    #: share of images whose outcome is identical, among those where no fp32 score lies
    #: within `margin` of a threshold (a flip there is noise, not a quantisation fault)
    outcome_agreement_outside_margin: float
    margin: float
    max_abs_diff: float
    mean_abs_diff: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def agreement(
    reference: npt.NDArray[np.float32],
    candidate: npt.NDArray[np.float32],
    categories: Sequence[str],
    *,
    outcome: OutcomeFn,
    thresholds: Mapping[str, float] | None = None,
    margin: float = 0.05,
) -> Agreement:
    """Compare two N x C score matrices (fp32 reference vs quantised candidate)."""
    if reference.shape != candidate.shape:
        raise ValueError("score matrices differ in shape")
    same = []
    clear = []
    for ra, rb in zip(reference, candidate, strict=True):
        sa = {c: float(ra[j]) for j, c in enumerate(categories)}
        sb = {c: float(rb[j]) for j, c in enumerate(categories)}
        ok = outcome(sa) == outcome(sb)
        same.append(ok)
        near = thresholds is not None and any(
            abs(sa[c] - t) <= margin for c, t in thresholds.items() if c in sa and t < 1.0
        )
        if not near:
            clear.append(ok)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return Agreement(
        n=len(same),
        outcome_agreement=float(np.mean(same)) if same else float("nan"),
        outcome_agreement_outside_margin=float(np.mean(clear)) if clear else float("nan"),
        margin=margin,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
    )


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, input_name: str, batches: Sequence[npt.NDArray[Any]]) -> None:
        self._it: Iterator[dict[str, npt.NDArray[Any]]] = iter(
            [{input_name: b} for b in batches]
        )

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        pass


@contextlib.contextmanager
def _sys_path_kept() -> Iterator[None]:
    """Importing onnxruntime.quantization appends onnxruntime/transformers to sys.path (for
    its own flat imports), and that folder has a `models` directory.  Left there, a process
    spawned afterwards (a batch job's workers get their parent's sys.path) resolves `models`
    to it as a namespace package whenever lookfirst is an editable install (its finder comes
    after the path): the model card went missing in every worker of the first
    `lookfirst batch --model int8-mixed`.  The import is done by then; the path goes back."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def quantize_onnx(
    src: Path,
    dst: Path,
    *,
    calibration: Sequence[npt.NDArray[Any]],
    keep_fp32: Sequence[str] | None = None,
    per_channel: bool = True,
) -> list[str]:
    """Static int8 QDQ quantisation of the convolutions; returns the node names kept fp32.

    `keep_fp32`: node names to leave in float; default: the first convolution.  Only Conv
    nodes are quantised, so the head (Gemm/MatMul) and everything after it stay fp32.
    """
    try:
        import onnx

        with _sys_path_kept():
            from onnxruntime.quantization import (
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )
    except ImportError as exc:  # pragma: no cover - the torch extra installs onnx
        raise ModelDependencyMissing("quantisation needs the `onnx` package") from exc
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        raise ModelError(f"{src} has no convolutions to quantise")
    excluded = list(keep_fp32) if keep_fp32 is not None else convs[:1]
    quantize_static(
        str(src),
        str(dst),
        _Reader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return excluded


def quantize_classifier(
    model: Path,
    out_dir: Path,
    *,
    calibration_images: Sequence[RGBImage],
    eval_images: Sequence[RGBImage],
    outcome: OutcomeFn,
    thresholds: Mapping[str, float] | None = None,
    threads: int = 1,
) -> tuple[ClassifierCard, Agreement]:
    """Quantise an exported classifier into out_dir (model.onnx + card.json), measured."""
    from models.classifier.onnx_scorer import OnnxClassifierScorer

    onnx_path, card = locate(model)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} is not empty")
    if not calibration_images or not eval_images:
        raise ModelError("quantisation needs calibration images and held-out images")
    pre = card.preprocess
    batches = [pre(calibration_images[i : i + 16]) for i in range(0, len(calibration_images), 16)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lookfirst-int8-") as tmp:
        kept = quantize_onnx(onnx_path, Path(tmp) / MODEL_FILE, calibration=batches)
        data = (Path(tmp) / MODEL_FILE).read_bytes()
    target = out_dir / MODEL_FILE
    target.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    int8_card = replace(
        card,
        name=f"{card.name}-int8" if not card.name.endswith("-int8") else card.name,
        onnx=OnnxFile(**{**card.onnx.__dict__, "sha256": sha, "size_bytes": len(data),
                         "precision": "int8"}),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    int8_card.save(out_dir / CARD_FILE)
    fp32 = OnnxClassifierScorer(model=onnx_path, threads=threads)
    int8 = OnnxClassifierScorer(model=out_dir, threads=threads)
    ref = fp32.run_model(pre(eval_images))
    cand = int8.run_model(pre(eval_images))
    agree = agreement(ref, cand, card.categories, outcome=outcome, thresholds=thresholds)
    int8_card = replace(int8_card, extra={"quantization": {
        "method": "static QDQ, uint8 activations, int8 per-channel weights, MinMax "
                  "calibration; convolutions only; first convolution, head and calibration "
                  "kept fp32",
        "kept_fp32": kept,
        "calibration_images": len(calibration_images),
        "source_sha256": card.onnx.sha256,
        "agreement_vs_fp32": agree.as_dict(),
    }})
    int8_card.save(out_dir / CARD_FILE)
    logger.info("model quantised", extra={"model_version": int8_card.version,
                                          "outcome_agreement": agree.outcome_agreement})
    return int8_card, agree
