"""Faster variants of NudeNet 320n (OpenVINO bf16, mixed int8), used only when measured.

A variant is built (int8) or compiled (bf16) on the machine that runs it, its agreement with
the fp32 reference is measured on a held-out benign calibration set, and the figures are kept
in the variant's card (`<root>/<variant>/card.json`).  `select_variant` hands out a variant
only when its card passes the bar; otherwise fp32, which is always available.  Pre- and
post-processing are NudeNet's, from `NudeNetScorer`, so only the network's arithmetic differs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.base import RGBImage, Scorer, ScoreResult
from models.errors import (
    ModelDependencyMissing,
    ModelDigestMismatch,
    ModelError,
    ModelFileMissing,
)

if TYPE_CHECKING:
    from models.nudenet import FloatArray

# onnxruntime, OpenCV (models.nudenet, models.calibration) and OpenVINO are imported where a
# model is built or measured: choosing a variant from its card needs none of them, and a batch
# job chooses before it starts its workers (half a second of imports off its start)

logger = logging.getLogger(__name__)

FP32 = "fp32"
OV_BF16 = "ov-bf16"
INT8_MIXED = "int8-mixed"
VARIANTS: tuple[str, ...] = (FP32, OV_BF16, INT8_MIXED)
#: the order `auto` tries; the first whose card passes the bar is used
PREFERENCE: tuple[str, ...] = (OV_BF16, INT8_MIXED)
CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"
CARD_VERSION = 1

#: Convolutions left in fp32 by the mixed int8 build: the detection head (model.22, whose
#: outputs are the scores) and the backbone's first five stages (model.0-4, the
#: high-resolution features).  Measured on 200 held-out benign images (2026-12-06): head +
#: first conv only 91 % identical category sets, head + model.0-2 97.5 %, head + model.0-4
#: 99.0 %, whole-graph int8 90 %.
INT8_KEEP_PREFIXES: tuple[str, ...] = (
    "/model.22/", "/model.0/", "/model.1/", "/model.2/", "/model.3/", "/model.4/",
)

OutcomeFn = Callable[[Mapping[str, float]], Hashable]


@dataclass(frozen=True, slots=True)
class AgreementBar:
    """When a variant may replace fp32 (issue 13): outcomes identical except where the fp32
    score lies within `margin` of a threshold, and this share of identical category sets."""

    margin: float = 0.05
    min_identical_category_sets: float = 0.975


BAR = AgreementBar()


@dataclass(frozen=True, slots=True)
class DetectorAgreement:
    """A variant against fp32 on the same images."""

    n: int
    #: images with at least one category detected by fp32 (the informative ones)
    n_with_detections: int
    #: share of images whose set of detected categories is identical
    identical_category_sets: float
    #: images whose outcome differs under the given policy
    outcome_flips: int
    #: ... of which no fp32 score lies within the margin of a threshold (must be 0)
    outcome_flips_outside_margin: int
    max_abs_diff: float
    p95_abs_diff: float

    def meets(self, bar: AgreementBar = BAR) -> bool:
        return (
            self.identical_category_sets >= bar.min_identical_category_sets
            and self.outcome_flips_outside_margin == 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def category_set(result: ScoreResult) -> frozenset[str]:
    """The categories a detector reported (a kept box; absent categories score 0)."""
    return frozenset(c for c, v in result.scores.items() if v > 0.0)


def detector_agreement(
    reference: Sequence[ScoreResult],
    candidate: Sequence[ScoreResult],
    *,
    outcome: OutcomeFn,
    thresholds: Mapping[str, Sequence[float]],
    margin: float = BAR.margin,
) -> DetectorAgreement:
    """Compare a variant's results with fp32's, image by image."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate differ in length")
    same_sets = flips = flips_clear = with_detections = 0
    diffs: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        ref_set, cand_set = category_set(ref), category_set(cand)
        same_sets += ref_set == cand_set
        with_detections += bool(ref_set)
        keys = set(ref.scores) | set(cand.scores)
        diffs.append(max((abs(ref.scores.get(k, 0.0) - cand.scores.get(k, 0.0)) for k in keys),
                         default=0.0))
        if outcome(ref.scores) != outcome(cand.scores):
            flips += 1
            near = any(
                abs(ref.scores.get(c, 0.0) - t) <= margin or abs(cand.scores.get(c, 0.0) - t)
                <= margin
                for c, ts in thresholds.items()
                for t in ts
            )
            flips_clear += not near
    n = len(reference)
    return DetectorAgreement(
        n=n,
        n_with_detections=with_detections,
        identical_category_sets=same_sets / n if n else float("nan"),
        outcome_flips=flips,
        outcome_flips_outside_margin=flips_clear,
        max_abs_diff=max(diffs, default=0.0),
        p95_abs_diff=float(np.percentile(diffs, 95)) if diffs else 0.0,
    )


# ---- the machine ------------------------------------------------------------------------
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_bf16() -> bool:
    """The CPU computes bf16 natively (AMX, or AVX-512 BF16): OpenVINO's bf16 is fast."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "onnxruntime": _package_version("onnxruntime"),
        "openvino": _openvino_version(),
    }


def _openvino_version() -> str | None:
    return _package_version("openvino") if openvino_installed() else None


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ---- scorers ----------------------------------------------------------------------------
class _VariantScorer(Scorer):
    """NudeNet's pre- and post-processing around another network runtime."""

    def __init__(self, *, threads: int, card: Path | None = None) -> None:
        from models.nudenet import NudeNetScorer

        # The fp32 scorer validates the card and the fp32 weights' digest, and owns the
        # preprocessing and NMS; it builds no session of its own (a worker's start-up time)
        self.base = NudeNetScorer(threads=max(threads, 1), card=card, load_session=False)
        self.categories = self.base.categories

    def run_model(self, tensor: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        tensor, meta = self.base.preprocess(images)
        raw = np.asarray(self.run_model(tensor), dtype=np.float32)
        if raw.shape[0] != len(images):
            raise ModelError(f"unexpected model output shape {raw.shape}")
        return self.base.results(self.base.postprocess(raw, meta), model_version=self.version)


def import_openvino() -> Any:
    """`openvino`, without its telemetry: importing it otherwise sends a usage event to Google
    Analytics unless the user opted out in their home folder (`openvino.tools.ovc`, 2026.4).
    A moderation service does not phone home, and a batch worker does not wait for a network
    call: with the telemetry package blocked, OpenVINO falls back to its own no-op stub."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


class OpenVinoScorer(_VariantScorer):
    """The fp32 weights compiled by OpenVINO with bf16 inference precision."""

    def __init__(self, *, threads: int = 1, card: Path | None = None,
                 precision: str = "bf16", cache_dir: Path | None = None) -> None:
        super().__init__(threads=threads, card=card)
        if not openvino_installed():
            raise ModelError("OpenVINO is not installed (pip install openvino)")
        ov = import_openvino()

        self.name = f"{self.base.name}+ov-{precision}"
        # same weights, other arithmetic: the name says which, the digest which weights
        self.version = f"{self.name}@sha256:{self.base.digest[:12]}"
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision,
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        if cache_dir is not None:
            # OpenVINO keeps the compiled blob (keyed by model, config and device): a worker
            # then starts in ~0.2 s instead of compiling for ~0.6 s
            core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            self._compiled = core.compile_model(str(self.base.weights_path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise ModelError(f"OpenVINO could not compile the model: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)

    def run_model(self, tensor: FloatArray) -> FloatArray:
        out = self._request.infer({0: tensor})[self._output]
        return np.asarray(out, dtype=np.float32)


class Int8Scorer(_VariantScorer):
    """The mixed int8 model built by `build_int8`, checked against its card's digest."""

    def __init__(self, *, model_dir: Path, threads: int = 1, card: Path | None = None) -> None:
        super().__init__(threads=threads, card=card)
        variant = read_card(model_dir)
        path = model_dir / MODEL_FILE
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelFileMissing(f"int8 model not found: {path}") from exc
        digest = hashlib.sha256(blob).hexdigest()
        if digest != variant.get("weights_sha256"):
            raise ModelDigestMismatch(f"{path} does not match the sha256 in its card")
        if variant.get("source_sha256") != self.base.digest:
            raise ModelDigestMismatch(f"{path} was built from other fp32 weights")
        self.name = f"{self.base.name}-int8-mixed"
        self.version = f"{self.name}@sha256:{digest[:12]}"
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(blob, sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run_model(self, tensor: FloatArray) -> FloatArray:
        return np.asarray(self._session.run(None, {self._input: tensor})[0], dtype=np.float32)


# ---- building, measuring, choosing ------------------------------------------------------
def read_card(model_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads((model_dir / CARD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFileMissing(f"no card in {model_dir}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"the card in {model_dir} is unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"the card in {model_dir} is not an object")
    return raw


def _write_card(model_dir: Path, card: Mapping[str, Any]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / CARD_FILE)


def load_variant(variant: str, *, root: Path, threads: int = 1) -> Scorer:
    """The scorer of one variant (no agreement check: `select_variant` does that)."""
    from models.nudenet import NudeNetScorer

    if variant == FP32:
        return NudeNetScorer(threads=threads)
    if variant == OV_BF16:
        return OpenVinoScorer(threads=threads, cache_dir=root / OV_BF16 / "compiled")
    if variant == INT8_MIXED:
        return Int8Scorer(model_dir=root / INT8_MIXED, threads=threads)
    raise ModelError(f"unknown NudeNet variant {variant!r} (known: {', '.join(VARIANTS)})")


def calibration_sets(
    sample_folders: Sequence[Path] = (), *, n_calibration: int = 96, n_held_out: int = 200
) -> tuple[list[RGBImage], list[RGBImage]]:
    """(images the quantiser calibrates on, held-out images agreement is measured on)."""
    from models.calibration import CALIBRATION_SEED, HELD_OUT_SEED, base_photos, derived_images

    bases = base_photos(sample_folders)
    return (derived_images(bases, n_calibration, seed=CALIBRATION_SEED),
            derived_images(bases, n_held_out, seed=HELD_OUT_SEED))


def _score_all(scorer: Scorer, images: Sequence[RGBImage], batch: int = 8) -> list[ScoreResult]:
    out: list[ScoreResult] = []
    for i in range(0, len(images), batch):
        out.extend(scorer.score(images[i : i + batch]))
    return out


def build_int8(root: Path, calibration: Sequence[RGBImage], *, threads: int = 1) -> Path:
    """Quantise the fp32 weights (convolutions outside INT8_KEEP_PREFIXES) into root/int8-mixed."""
    try:
        import onnx
    except ImportError as exc:  # the torch extra brings onnx; without it, no int8 variant
        raise ModelDependencyMissing("building the int8 variant needs the `onnx` package"
                                     ) from exc

    from models.calibration import CALIBRATION_SEED
    from models.classifier.quantize import quantize_onnx
    from models.nudenet import NudeNetScorer

    fp32 = NudeNetScorer(threads=threads)
    model = onnx.load(str(fp32.weights_path))
    keep = [n.name for n in model.graph.node
            if n.op_type == "Conv" and n.name.startswith(INT8_KEEP_PREFIXES)]
    batches = [fp32.preprocess(calibration[i : i + 8])[0] for i in range(0, len(calibration), 8)]
    out_dir = root / INT8_MIXED
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lookfirst-int8-", dir=out_dir) as tmp:
        target = Path(tmp) / MODEL_FILE
        # onnxruntime's quantiser logs advice on the root logger; it is not ours to act on
        quant_logger = logging.getLogger()
        level = quant_logger.level
        quant_logger.setLevel(logging.ERROR)
        try:
            quantize_onnx(fp32.weights_path, target, calibration=batches, keep_fp32=keep)
        finally:
            quant_logger.setLevel(level)
        blob = target.read_bytes()
        os.replace(target, out_dir / MODEL_FILE)
    _write_card(out_dir, {
        "card_version": CARD_VERSION,
        "name": f"{fp32.name}-int8-mixed",
        "variant": INT8_MIXED,
        "source_sha256": fp32.digest,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "quantization": {
            "method": "onnxruntime static QDQ, uint8 activations, int8 per-channel weights, "
                      "MinMax calibration, convolutions only",
            "kept_fp32": keep,
            "calibration_images": len(calibration),
            "calibration_seed": CALIBRATION_SEED,
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    return out_dir


def measure(
    variant: str,
    *,
    root: Path,
    held_out: Sequence[RGBImage],
    outcome: OutcomeFn,
    thresholds: Mapping[str, Sequence[float]],
    threads: int = 1,
    bar: AgreementBar = BAR,
    judged_by: str = "",
    reference: Sequence[ScoreResult] | None = None,
) -> DetectorAgreement:
    """Score the held-out set with fp32 and the variant; record the figures in its card.

    `judged_by` names what `outcome` applies (a policy and its version): outcomes depend on
    it, so a card measured under another policy is measured again before it is trusted.
    `reference`: fp32's results on `held_out`, when the caller has them already."""
    from models.calibration import HELD_OUT_SEED
    from models.nudenet import NudeNetScorer

    if reference is None:
        reference = _score_all(NudeNetScorer(threads=threads), held_out)
    scorer = load_variant(variant, root=root, threads=threads)
    found = detector_agreement(reference, _score_all(scorer, held_out), outcome=outcome,
                               thresholds=thresholds, margin=bar.margin)
    model_dir = root / variant
    try:
        card = read_card(model_dir)
    except ModelFileMissing:
        card = {"card_version": CARD_VERSION, "name": scorer.name, "variant": variant,
                "source_sha256": scorer.version.rsplit(":", 1)[-1]}
    card.update({
        "model_version": scorer.version,
        "agreement_vs_fp32": found.as_dict(),
        "bar": asdict(bar),
        "passed": found.meets(bar),
        "judged_by": judged_by,
        "held_out": {"images": len(held_out), "seed": HELD_OUT_SEED,
                     "what": "benign photos (scikit-image data, samples/) cropped, flipped, "
                             "rescaled, recoloured and tiled at 1024x768"},
        "machine": _machine(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    _write_card(model_dir, card)
    logger.info("variant measured", extra={"variant": variant, "passed": card["passed"],
                                           **found.as_dict()})
    return found


def usable(variant: str, root: Path, judged_by: str = "") -> bool:
    """The variant's card exists, passed the bar, and was measured on this kind of CPU under
    the same policy."""
    if variant == FP32:
        return True
    return _measured_here(root / variant, judged_by) and bool(read_card(root / variant)["passed"])


def candidates(variant: str) -> tuple[str, ...]:
    """What `variant` (a name or `auto`) may resolve to here, best first; fp32 comes last."""
    if variant == "auto":
        order = [v for v in PREFERENCE
                 if v != OV_BF16 or (openvino_installed() and has_bf16())]
        return (*order, FP32)
    if variant not in VARIANTS:
        raise ModelError(f"unknown NudeNet variant {variant!r} (known: auto, "
                         f"{', '.join(VARIANTS)})")
    return (variant,) if variant == FP32 else (variant, FP32)


def select_variant(
    variant: str,
    *,
    root: Path,
    outcome: OutcomeFn,
    thresholds: Mapping[str, Sequence[float]],
    sample_folders: Sequence[Path] = (),
    measure_missing: bool = True,
    threads: int = 1,
    judged_by: str = "",
) -> str:
    """The variant to run: the first candidate whose measured agreement passes the bar.

    A candidate never measured on this machine is built and measured first (once; the card
    is kept under `root`) when `measure_missing`; one that fails the bar is skipped, and fp32
    is the fallback.
    """
    sets: tuple[list[RGBImage], list[RGBImage]] | None = None
    for name in candidates(variant):
        if name == FP32 or usable(name, root, judged_by):
            return name
        if _measured_here(root / name, judged_by):
            logger.warning("variant below the agreement bar; not used", extra={"variant": name})
            continue
        if not measure_missing:
            continue
        try:
            if sets is None:
                sets = calibration_sets(sample_folders)
            if name == INT8_MIXED:
                build_int8(root, sets[0], threads=threads)
            measure(name, root=root, held_out=sets[1], outcome=outcome, thresholds=thresholds,
                    threads=threads, judged_by=judged_by)
        except ModelError as exc:
            logger.warning("variant unavailable", extra={"variant": name, "error": exc.code})
            continue
        if usable(name, root, judged_by):
            return name
    return FP32


def _measured_here(model_dir: Path, judged_by: str = "") -> bool:
    """A card with figures measured on this kind of CPU (and runtime), under `judged_by`."""
    try:
        card = read_card(model_dir)
    except ModelError:
        return False
    machine = card.get("machine", {})
    now = _machine()
    return ("passed" in card and card.get("judged_by", "") == judged_by
            and all(machine.get(k) == now[k] for k in ("amx_bf16", "avx512_bf16", "openvino")))


def describe(root: Path, judged_by: str = "") -> dict[str, Any]:
    """What `lookfirst doctor` shows: each variant's card figures, or that it was never measured;
    `usable_here`: under the policy `judged_by` names."""
    out: dict[str, Any] = {"bf16_cpu": has_bf16(), "openvino": _openvino_version()}
    for name in (OV_BF16, INT8_MIXED):
        try:
            card = read_card(root / name)
        except ModelError:
            out[name] = {"measured": False}
            continue
        out[name] = {"measured": "passed" in card, "passed": card.get("passed", False),
                     "usable_here": usable(name, root, judged_by),
                     "judged_by": card.get("judged_by"),
                     "agreement_vs_fp32": card.get("agreement_vs_fp32")}
    return out
