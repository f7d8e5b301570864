"""The classifier's model card: the weights descriptor every consumer rebuilds the model from.

One JSON file next to the ONNX file: architecture, categories, preprocessing, calibration,
metrics, the training data digest, the parity measured at export, and the sha256 of the very
ONNX file it describes (a scorer refuses a file whose digest differs).  Validated on load so a
bad card fails loudly, naming the field.  No torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.classifier.calibrate import Calibration
from models.classifier.preprocess import Preprocess
from models.errors import ModelCardInvalid, ModelFileMissing

CARD_VERSION = 1
CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: digest characters kept in a model version (as the NudeNet backend does)
VERSION_DIGEST_CHARS = 12


def model_version(name: str, sha256: str) -> str:
    return f"{name}@sha256:{sha256[:VERSION_DIGEST_CHARS]}"


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class OnnxFile:
    file: str
    sha256: str
    size_bytes: int
    input_name: str
    output_name: str
    opset: int
    max_batch: int
    #: "fp32", or "int8" for a quantised copy
    precision: str = "fp32"


@dataclass(frozen=True)
class ClassifierCard:
    name: str
    arch: str
    categories: tuple[str, ...]
    preprocess: Preprocess
    calibration: Calibration
    onnx: OnnxFile
    #: evaluation and training figures, as measured (val AUC, calibration ECE, ...)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    #: manifest digest, counts, seed, config, the checkpoint it came from
    training: Mapping[str, Any] = field(default_factory=dict)
    #: torch vs onnxruntime at export: max abs diff, identical outcomes, n images
    parity: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    notes: str = ""
    #: anything else (quantisation agreement, ...)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return model_version(self.name, self.onnx.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_version": CARD_VERSION,
            "name": self.name,
            "model_version": self.version,
            "task": "multi-label image classification (one sigmoid per category)",
            "architecture": self.arch,
            "categories": list(self.categories),
            "preprocessing": self.preprocess.to_dict(),
            "calibration": self.calibration.to_dict(),
            "output": {
                "name": self.onnx.output_name,
                "meaning": "calibrated probability per category, in `categories` order",
            },
            "onnx": {
                "file": self.onnx.file,
                "sha256": self.onnx.sha256,
                "size_bytes": self.onnx.size_bytes,
                "input_name": self.onnx.input_name,
                "output_name": self.onnx.output_name,
                "opset": self.onnx.opset,
                "dynamic_batch": True,
                "max_batch": self.onnx.max_batch,
                "precision": self.onnx.precision,
            },
            "metrics": dict(self.metrics),
            "training": dict(self.training),
            "parity": dict(self.parity),
            "created_at": self.created_at,
            "notes": self.notes,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "card") -> ClassifierCard:
        try:
            if int(raw["card_version"]) > CARD_VERSION:
                raise ValueError(f"card_version {raw['card_version']} is newer than this reader")
            onnx = raw["onnx"]
            card = cls(
                name=str(raw["name"]),
                arch=str(raw["architecture"]),
                categories=tuple(str(c) for c in raw["categories"]),
                preprocess=Preprocess.from_dict(raw["preprocessing"]),
                calibration=Calibration.from_dict(raw["calibration"]),
                onnx=OnnxFile(
                    file=str(onnx["file"]),
                    sha256=str(onnx["sha256"]).lower(),
                    size_bytes=int(onnx["size_bytes"]),
                    input_name=str(onnx["input_name"]),
                    output_name=str(onnx["output_name"]),
                    opset=int(onnx["opset"]),
                    max_batch=int(onnx["max_batch"]),
                    precision=str(onnx.get("precision", "fp32")),
                ),
                metrics=dict(raw.get("metrics", {})),
                training=dict(raw.get("training", {})),
                parity=dict(raw.get("parity", {})),
                created_at=str(raw.get("created_at", "")),
                notes=str(raw.get("notes", "")),
                extra=dict(raw.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCardInvalid(f"{source} is invalid: {type(exc).__name__}: {exc}") from None
        card._validate(source)
        return card

    def _validate(self, source: str) -> None:
        problems = []
        if not valid_name(self.name):
            problems.append(f"name {self.name!r} must be lowercase letters, digits, . _ -")
        if not _SHA256.match(self.onnx.sha256):
            problems.append("onnx.sha256 must be 64 hexadecimal characters")
        if not self.categories or len(set(self.categories)) != len(self.categories):
            problems.append("categories must be distinct and non-empty")
        if self.calibration.categories != self.categories:
            problems.append("calibration.per_category must list the categories in order")
        if any(t <= 0 for t in self.calibration.temperature):
            problems.append("temperatures must be positive")
        if "/" in self.onnx.file or "\\" in self.onnx.file or self.onnx.file.startswith("."):
            problems.append("onnx.file must be a plain file name next to the card")
        if problems:
            raise ModelCardInvalid(f"{source} is invalid: " + "; ".join(problems))

    @classmethod
    def load(cls, path: Path) -> ClassifierCard:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFileMissing(f"model card not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise ModelCardInvalid(f"model card {path} is unreadable: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelCardInvalid(f"model card {path} is not a JSON object")
        return cls.from_dict(raw, source=str(path))


def locate(model: Path | str) -> tuple[Path, ClassifierCard]:
    """(ONNX file, its card) for a model directory, an ONNX file, or a card file.

    The card is always the `card.json` beside the model; an ONNX file passed directly must
    be the one the card names (or a quantised sibling the caller verifies by digest).
    """
    model = Path(model)
    if model.is_dir():
        card_path = model / CARD_FILE
    elif model.suffix == ".json":
        card_path = model
    else:
        card_path = model.with_name(CARD_FILE)
    card = ClassifierCard.load(card_path)
    onnx_path = model if model.suffix == ".onnx" else card_path.parent / card.onnx.file
    return onnx_path, card
