"""Classifier checkpoints: dicts with named keys, written atomically, read with weights_only.

A checkpoint holds everything needed to rebuild and describe the model without the training
code's arguments: architecture, categories, preprocessing, weights, calibration, metrics, the
training data digest, and (for `last.pt`) the optimiser and scheduler to resume from.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.classifier.arch import ClassifierNet, ScoringNet, build_net
from models.classifier.calibrate import Calibration
from models.classifier.preprocess import Preprocess
from models.errors import CheckpointInvalid, ModelFileMissing

FORMAT = "lookfirst.classifier.checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "arch", "categories", "preprocessing", "model")


def save_checkpoint(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a truncated best.pt behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(dict(checkpoint), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedClassifier:
    """A checkpoint rebuilt: the network (eval mode, CPU) and what describes it."""

    path: Path
    sha256: str
    arch: str
    categories: tuple[str, ...]
    preprocess: Preprocess
    net: ClassifierNet
    calibration: Calibration
    #: the checkpoint's other named keys (metrics, training, data, history, ...)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or f"classifier-{self.arch}")

    def scoring_net(self) -> ScoringNet:
        return ScoringNet(
            self.net, bias=self.calibration.bias, temperature=self.calibration.temperature
        ).eval()


def load_checkpoint(path: Path | str) -> LoadedClassifier:
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects would run code.
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors: damaged or not a torch file
        raise CheckpointInvalid(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointInvalid(f"{path} is not a lookfirst classifier checkpoint")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointInvalid(f"checkpoint {path} lacks {missing}")
    if int(raw["format_version"]) > FORMAT_VERSION:
        raise CheckpointInvalid(
            f"checkpoint {path} has format {raw['format_version']}; this lookfirst reads up "
            f"to {FORMAT_VERSION}"
        )
    categories = tuple(str(c) for c in raw["categories"])
    try:
        preprocess = Preprocess.from_dict(raw["preprocessing"])
        net = build_net(str(raw["arch"]), categories, preprocess)
        net.load_state_dict(raw["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointInvalid(f"checkpoint {path} does not rebuild: {exc}") from exc
    net.eval()
    calibration = (
        Calibration.from_dict(raw["calibration"])
        if raw.get("calibration")
        else Calibration.identity(categories, raw.get("prior_bias"))
    )
    if calibration.categories != categories:
        raise CheckpointInvalid(f"checkpoint {path}: calibration categories differ from the model")
    meta = {k: v for k, v in raw.items() if k not in ("model", "optimizer", "scheduler")}
    return LoadedClassifier(
        path=path,
        sha256=file_digest(path),
        arch=str(raw["arch"]),
        categories=categories,
        preprocess=preprocess,
        net=net,
        calibration=calibration,
        meta=meta,
    )


def predict_logits(
    net: ClassifierNet,
    batches: Sequence[npt.NDArray[np.uint8]] | Any,
    *,
    device: torch.device | None = None,
) -> npt.NDArray[np.float32]:
    """Raw logits for an iterable of preprocessed uint8 batches, under inference_mode."""
    device = device or next(net.parameters()).device
    was_training = net.training
    net.eval()
    out: list[npt.NDArray[np.float32]] = []
    try:
        with torch.inference_mode():
            for batch in batches:
                x = torch.as_tensor(batch).to(device, non_blocking=True)
                out.append(net(x).float().cpu().numpy())
    finally:
        net.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out, axis=0)
