"""Classifier architectures (a registry that refuses duplicates) and the networks built on them.

`ClassifierNet` takes the preprocessing object's output as is (N x H x W x 3 uint8) and
normalises inside, so the exported graph is the whole model.  `ScoringNet` adds the
calibration (prior correction and temperature per category) and the sigmoid: what it returns
are the scores served.  The default architecture, EfficientNet-Lite0, starts from ImageNet
weights that install with the torch extra (no download at run time); the torchvision ones
start from scratch unless given `--init`.  Imports torch; import this module only where torch
is wanted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from models.classifier import efficientnet_lite
from models.classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from models.classifier.pretrained import get_weights
from models.errors import CheckpointInvalid, ModelError, UnknownArchitecture

logger = logging.getLogger(__name__)

#: what `lookfirst train` builds when no --arch is given
DEFAULT_ARCH = "efficientnet_lite0"
#: --init values besides a file path: from scratch; the architecture's offline weights
INIT_NONE = "none"
INIT_PRETRAINED = "pretrained"
#: torchvision's ImageNet weights (downloaded, online only), or the offline ones where an
#: architecture ships them
INIT_IMAGENET = "imagenet"


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """How to build one architecture with a multi-label head."""

    name: str
    #: torchvision builder name (torchvision.models.get_model); unused when `factory` is set
    builder: str
    #: torchvision's ImageNet weights enum value, for `--init imagenet` (downloaded online only)
    imagenet_weights: str
    #: state_dict key prefix of the final classification layer (replaced for our categories)
    head: str
    default_size: int = 224
    #: num_classes -> network, for architectures that are not torchvision's
    factory: Callable[[int], nn.Module] | None = None
    #: offline pretrained weights (models.classifier.pretrained): the default start
    pretrained: str | None = None
    #: the pixel statistics the network expects (its pretrained weights were trained with)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def build(self, num_classes: int) -> nn.Module:
        if self.factory is not None:
            return self.factory(num_classes)
        model: nn.Module = torchvision.models.get_model(
            self.builder, weights=None, num_classes=num_classes
        )
        return model

    def preprocess(self, size: int | None = None) -> Preprocess:
        """The preprocessing object for this architecture at `size` (default: its own)."""
        return Preprocess(size=size or self.default_size, mean=self.mean, std=self.std)


ARCHITECTURES: dict[str, ArchSpec] = {}


def register_architecture(spec: ArchSpec) -> ArchSpec:
    """Add an architecture; a name is registered once (an override would change old models)."""
    if spec.name in ARCHITECTURES:
        raise ValueError(f"an architecture named {spec.name!r} is already registered")
    ARCHITECTURES[spec.name] = spec
    return spec


for _spec in (
    ArchSpec("mobilenet_v3_small", "mobilenet_v3_small",
             "MobileNet_V3_Small_Weights.IMAGENET1K_V1", "classifier.3"),
    ArchSpec("mobilenet_v3_large", "mobilenet_v3_large",
             "MobileNet_V3_Large_Weights.IMAGENET1K_V2", "classifier.3"),
    ArchSpec("efficientnet_b0", "efficientnet_b0",
             "EfficientNet_B0_Weights.IMAGENET1K_V1", "classifier.1"),
    ArchSpec("resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "fc"),
    ArchSpec("resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", "fc"),
    ArchSpec("convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
             "classifier.2"),
    ArchSpec("efficientnet_lite0", "", "", "classifier",
             factory=efficientnet_lite.efficientnet_lite0,
             pretrained="efficientnet_lite0.imagenet",
             mean=efficientnet_lite.MEAN, std=efficientnet_lite.STD),
):
    register_architecture(_spec)


def get_architecture(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitecture(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


class ClassifierNet(nn.Module):
    """uint8 N x H x W x 3 RGB -> N x C logits, one per category (multi-label)."""

    pixel_mean: torch.Tensor
    pixel_inv_std: torch.Tensor

    def __init__(self, backbone: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.backbone = backbone
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        # Buffers, not constants: they are saved in the checkpoint and baked into the ONNX graph.
        self.register_buffer("pixel_mean", mean)
        self.register_buffer("pixel_inv_std", inv_std)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW as a view: the result is channels_last in memory, which is what the
        # convolutions want on CPU and on tensor cores.
        x = x.permute(0, 3, 1, 2)
        dtype = self.pixel_mean.dtype
        return (x.to(dtype) - self.pixel_mean) * self.pixel_inv_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.backbone(self.normalise(x))
        return logits


class ScoringNet(nn.Module):
    """ClassifierNet + calibration + sigmoid: calibrated probabilities, the scores served."""

    logit_bias: torch.Tensor
    inv_temperature: torch.Tensor

    def __init__(self, net: ClassifierNet, *, bias: Sequence[float], temperature: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("logit_bias", torch.tensor(list(bias), dtype=torch.float32))
        self.register_buffer(
            "inv_temperature", 1.0 / torch.tensor(list(temperature), dtype=torch.float32)
        )

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        # float32 whatever the autocast dtype of the logits: the last step decides thresholds.
        return torch.sigmoid((logits.float() + self.logit_bias) * self.inv_temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.net(x))


def build_net(arch: str, categories: Sequence[str], preprocess: Preprocess) -> ClassifierNet:
    """The architecture with one output per category, normalising with `preprocess`."""
    spec = get_architecture(arch)
    if not categories:
        raise ModelError("a classifier needs at least one category")
    return ClassifierNet(spec.build(len(categories)), preprocess)


def _unwrap_state_dict(obj: Any) -> Mapping[str, torch.Tensor]:
    """A plain state_dict, our checkpoint, or a {"state_dict"/"model": ...} wrapper."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        if all(isinstance(k, str) for k in obj) and all(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            state: Mapping[str, torch.Tensor] = obj
            return state
    raise CheckpointInvalid("the --init file holds no state_dict of tensors")


def resolve_init(arch: str, init: str | Path | None) -> str | None:
    """The start a training run takes: None (from scratch), "pretrained", "imagenet" or a path.

    No `init` means the architecture's default: its offline pretrained weights where it has
    them, else from scratch (as before there were any).  "none" asks for from scratch.
    """
    spec = get_architecture(arch)
    if init is None or str(init) == "":
        return INIT_PRETRAINED if spec.pretrained else None
    if str(init) == INIT_NONE:
        return None
    if str(init) == INIT_PRETRAINED and not spec.pretrained:
        raise _no_offline_weights(arch)
    return str(init)


def _no_offline_weights(arch: str) -> CheckpointInvalid:
    have = sorted(a.name for a in ARCHITECTURES.values() if a.pretrained)
    return CheckpointInvalid(
        f"{arch} ships no offline pretrained weights (those that do: {', '.join(have)}); "
        "use --init imagenet (online), --init PATH or --init none"
    )


def load_initial_weights(net: ClassifierNet, arch: str, init: Path | str) -> dict[str, Any]:
    """Load initial backbone weights into `net`: offline pretrained, a local file, or online.

    "pretrained" (and "imagenet", for an architecture that ships its ImageNet weights) loads
    the installed weights; "imagenet" otherwise downloads torchvision's; anything else is a
    path.  The head (one output per category) is kept from `net` whenever the file's head has
    another shape, as with any ImageNet or differently-labelled checkpoint.  Every other
    parameter must be present and match: a silently half-loaded backbone trains into a worse
    model.
    """
    spec = get_architecture(arch)
    described: dict[str, Any] = {}
    if str(init) in (INIT_PRETRAINED, INIT_IMAGENET) and spec.pretrained:
        weights = get_weights(spec.pretrained)
        state: Mapping[str, torch.Tensor] = weights.state_dict()
        source = weights.name
        described = weights.describe()
    elif str(init) == INIT_PRETRAINED:
        raise _no_offline_weights(arch)
    elif str(init) == INIT_IMAGENET:
        from torchvision.models import get_weight

        # Downloads through torchvision's own cache (TORCH_HOME); fails offline, clearly.
        try:
            state = get_weight(spec.imagenet_weights).get_state_dict(progress=True)
        except Exception as exc:  # urllib/ssl errors differ by platform
            raise ModelError(
                f"could not fetch {spec.imagenet_weights} (offline?): {exc}; "
                "pass --init PATH with a local state_dict instead"
            ) from exc
        source = spec.imagenet_weights
    else:
        path = Path(init)
        if not path.is_file():
            raise CheckpointInvalid(f"--init file not found: {path}")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors: a damaged or foreign file
            raise CheckpointInvalid(f"cannot read --init file {path}: {exc}") from exc
        state = _unwrap_state_dict(raw)
        source = str(path)

    # Accept a bare backbone state_dict (torchvision's) or a ClassifierNet's ("backbone.").
    target = net.backbone.state_dict()
    backbone_state = {
        (k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()
        if k not in ("pixel_mean", "pixel_inv_std")
    }
    head_keys = [k for k in target if k.startswith(spec.head + ".")]
    skipped: list[str] = []
    for k in head_keys:
        if k in backbone_state and backbone_state[k].shape != target[k].shape:
            del backbone_state[k]
            skipped.append(k)
    missing = [k for k in target if k not in backbone_state and k not in head_keys]
    unexpected = [k for k in backbone_state if k not in target]
    mismatched = [
        k for k in backbone_state if k in target and backbone_state[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointInvalid(
            f"--init {source} does not fit {arch}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shape mismatch {mismatched[:3]}"
        )
    net.backbone.load_state_dict(backbone_state, strict=False)
    kept_head = [k for k in head_keys if k not in backbone_state]
    logger.info("initial weights loaded", extra={"source": source, "head_reset": kept_head})
    return {"source": source, "head_reset": sorted(set(kept_head) | set(skipped)),
            "tensors": len(state), **described}


def set_threads(threads: int) -> None:
    """Cap torch's intra-op threads (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


ProgressFn = Callable[[int], None]
