"""Export: a calibrated checkpoint -> one self-contained ONNX file + its model card.

The graph is the whole scorer: uint8 N x size x size x 3 RGB in (dynamic batch), calibrated
probabilities out (normalisation, network, prior correction, temperature, sigmoid).  Before
the card is written, a parity check runs the same preprocessed images through torch and
through onnxruntime: the largest absolute score difference must be within tolerance and every
policy outcome identical; otherwise nothing is left behind and ExportParityFailed says why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.base import RGBImage
from models.classifier.card import (
    CARD_FILE,
    MODEL_FILE,
    ClassifierCard,
    OnnxFile,
    model_version,
    valid_name,
)
from models.classifier.checkpoint import LoadedClassifier, file_digest
from models.errors import ExportParityFailed, ModelDependencyMissing, ModelError

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "scores"
MAX_BATCH = 1024
#: torch vs onnxruntime on the same input: float32 reassociation differs by ~1e-6 on
#: MobileNetV3 and ~1e-4 on ResNet-50 (logits), less after the sigmoid
DEFAULT_TOLERANCE = 1e-4

OutcomeFn = Callable[[Mapping[str, float]], Hashable]


def threshold_outcome(thresholds: Mapping[str, float]) -> OutcomeFn:
    """Which categories fire at these thresholds (the policy rule, without context)."""

    def outcome(scores: Mapping[str, float]) -> Hashable:
        return tuple(sorted(c for c, t in thresholds.items() if t < 1.0 and scores[c] >= t))

    return outcome


@dataclass(frozen=True)
class Parity:
    n: int
    max_abs_diff: float
    outcomes_identical: bool
    mismatched: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.outcomes_identical

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "max_abs_diff": self.max_abs_diff,
            "outcomes_identical": self.outcomes_identical,
            "outcomes_mismatched": self.mismatched,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "compared": "torch (fp32, CPU) vs onnxruntime (CPU) on the same uint8 inputs",
        }


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    onnx_path: Path
    card_path: Path
    card: ClassifierCard
    parity: Parity


def probe_images(n: int, seed: int = 0) -> list[RGBImage]:
    """Varied synthetic images for a parity check when no dataset is given."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(48, 400)), int(rng.integers(48, 400))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3) * (xx[..., None] / w if i % 2 else yy[..., None] / h)
        img = base + rng.normal(0, 30 + 10 * (i % 4), (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the torch extra installs it
        raise ModelDependencyMissing("ONNX export needs `onnx` and `onnxscript` "
                                     "(pip install '.[torch]')") from exc
    return onnx


def _export_graph(module: torch.nn.Module, size: int, path: Path) -> None:
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        # The exporter narrates its own progress through warnings; they are not ours to fix.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: batch},),
            verbose=False,
        )


def _finalise(onnx_path: Path, meta: Mapping[str, str]) -> int:
    """Check the graph, embed the description, save as one file; returns the opset."""
    onnx = _require_onnx()
    model = onnx.load(str(onnx_path), load_external_data=True)
    onnx.checker.check_model(model)
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = "lookfirst multi-label classifier; see lookfirst.card"
    # Everything inside the one file: a model that needs a sidecar is a model half-copied.
    onnx.save_model(model, str(onnx_path), save_as_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return int(opset)


def parity_check(
    loaded: LoadedClassifier,
    onnx_path: Path,
    images: Sequence[RGBImage],
    *,
    outcome: OutcomeFn,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
) -> Parity:
    """torch vs onnxruntime on the same preprocessed images; never raises on a mismatch."""
    import onnxruntime as ort

    if not images:
        raise ModelError("parity needs at least one image")
    net = loaded.scoring_net().cpu()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    torch_parts, ort_parts = [], []
    with torch.inference_mode():
        for lo in range(0, len(images), batch_size):
            x = loaded.preprocess(images[lo : lo + batch_size])
            torch_parts.append(net(torch.from_numpy(x)).numpy())
            ort_parts.append(np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]))
    a: npt.NDArray[np.float32] = np.concatenate(torch_parts)
    b: npt.NDArray[np.float32] = np.concatenate(ort_parts)
    cats = loaded.categories
    mismatched = 0
    for ra, rb in zip(a, b, strict=True):
        sa = {c: float(ra[j]) for j, c in enumerate(cats)}
        sb = {c: float(rb[j]) for j, c in enumerate(cats)}
        mismatched += outcome(sa) != outcome(sb)
    return Parity(
        n=len(images),
        max_abs_diff=float(np.max(np.abs(a.astype(np.float64) - b))),
        outcomes_identical=mismatched == 0,
        mismatched=mismatched,
        tolerance=tolerance,
    )


def export(
    loaded: LoadedClassifier,
    out_dir: Path,
    *,
    parity_images: Sequence[RGBImage],
    outcome: OutcomeFn | None = None,
    name: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    metrics: Mapping[str, Any] | None = None,
    notes: str = "",
) -> ExportResult:
    """Write out_dir/model.onnx and out_dir/card.json, or nothing if parity fails."""
    name = name or loaded.name
    if not valid_name(name):
        raise ModelError(f"model name {name!r}: use lowercase letters, digits, '.', '_', '-'")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} is not empty; export into a new directory")
    outcome = outcome or threshold_outcome(dict.fromkeys(loaded.categories, 0.5))
    size = loaded.preprocess.size
    with tempfile.TemporaryDirectory(prefix="lookfirst-export-") as tmp:
        tmp_onnx = Path(tmp) / MODEL_FILE
        _export_graph(loaded.scoring_net().cpu(), size, tmp_onnx)
        meta = {
            "lookfirst.name": name,
            "lookfirst.categories": json.dumps(list(loaded.categories)),
            "lookfirst.preprocessing": json.dumps(loaded.preprocess.to_dict()),
            "lookfirst.calibration": json.dumps(loaded.calibration.to_dict()),
            "lookfirst.source_checkpoint_sha256": loaded.sha256,
        }
        opset = _finalise(tmp_onnx, meta)
        parity = parity_check(loaded, tmp_onnx, parity_images, outcome=outcome,
                              tolerance=tolerance)
        if not parity.passed:
            raise ExportParityFailed(
                f"onnxruntime differs from torch on {parity.n} images: max abs diff "
                f"{parity.max_abs_diff:.3g} (tolerance {tolerance:g}), "
                f"{parity.mismatched} policy outcomes differ; nothing was written"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / MODEL_FILE
        shutil.copyfile(tmp_onnx, onnx_path)
    sha = file_digest(onnx_path)
    card = ClassifierCard(
        name=name,
        arch=loaded.arch,
        categories=loaded.categories,
        preprocess=loaded.preprocess,
        calibration=loaded.calibration,
        onnx=OnnxFile(
            file=MODEL_FILE,
            sha256=sha,
            size_bytes=onnx_path.stat().st_size,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            opset=opset,
            max_batch=MAX_BATCH,
        ),
        metrics={**dict(loaded.meta.get("metrics") or {}), **dict(metrics or {})},
        training={
            "data_digest": (loaded.meta.get("data") or {}).get("digest"),
            "data": loaded.meta.get("data"),
            "config": loaded.meta.get("train_config"),
            "init": loaded.meta.get("init"),
            "best_epoch": loaded.meta.get("epoch"),
            "pos_weight": loaded.meta.get("pos_weight"),
            "checkpoint": {"file": loaded.path.name, "sha256": loaded.sha256},
            "versions": loaded.meta.get("versions"),
        },
        parity=parity.as_dict(),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        notes=notes,
    )
    card_path = out_dir / CARD_FILE
    card.save(card_path)
    logger.info("model exported", extra={"model_version": model_version(name, sha),
                                         "max_abs_diff": parity.max_abs_diff})
    return ExportResult(out_dir, onnx_path, card_path, card, parity)
