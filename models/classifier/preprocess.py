"""The classifier's one preprocessing object, shared by training, export, parity, batch and API.

`Preprocess` turns decoded RGB images into the model's input: one N x size x size x 3 uint8
batch, each image squashed (aspect ratio not kept, so nothing at the borders is cropped away)
with area interpolation.  Normalisation (mean/std) is part of the network itself and so part
of the exported ONNX graph: the CPU serving path hands onnxruntime uint8 pixels and nothing
else can drift.  numpy and OpenCV only; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models.base import RGBImage
from models.errors import InvalidArgument

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

UInt8Batch = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True, kw_only=True)
class Preprocess:
    """RGB uint8 images of any size -> N x size x size x 3 uint8, ready for the model.

    Keyword-only and callable, like torchvision's presets; `to_dict`/`from_dict` carry it in
    checkpoints, ONNX metadata and model cards, so every consumer rebuilds the same object.
    """

    size: int = 224
    #: per-channel mean and std of [0, 1] pixels, applied inside the network
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: "area": OpenCV INTER_AREA (antialiased on downscale); the only mode, named for the card
    interpolation: str = "area"

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 1024:
            raise InvalidArgument(f"size must be in [16, 1024], got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidArgument("mean and std need three values each, std positive")
        if self.interpolation != "area":
            raise InvalidArgument(f"unknown interpolation {self.interpolation!r} (known: area)")

    def __call__(self, images: Sequence[RGBImage]) -> UInt8Batch:
        out = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            self.resize_into(image, out[i])
        return out

    def one(self, image: RGBImage) -> UInt8Batch:
        """One image -> size x size x 3 (training and data loaders work per sample)."""
        out = np.empty((self.size, self.size, 3), dtype=np.uint8)
        self.resize_into(image, out)
        return out

    def resize_into(self, image: RGBImage, dst: UInt8Batch) -> None:
        if image.shape[0] == self.size and image.shape[1] == self.size:
            dst[...] = image
            return
        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)  # cv2 refuses some strided views
        cv2.resize(image, (self.size, self.size), dst=dst, interpolation=cv2.INTER_AREA)

    # -- description ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["input"] = {
            "layout": "NHWC",
            "dtype": "uint8",
            "color_order": "RGB",
            "resize": "squash to size x size (aspect ratio not kept), OpenCV INTER_AREA",
            "normalisation": "inside the network: (pixel / 255 - mean) / std",
        }
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Preprocess:
        mean = tuple(float(x) for x in raw["mean"])
        std = tuple(float(x) for x in raw["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need three values each")
        return cls(
            size=int(raw["size"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            interpolation=str(raw.get("interpolation", "area")),
        )
