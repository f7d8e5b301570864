"""Benign photos for the perceptual-hash tests, and the edits a messaging app or a person makes
to them (resize, recompress, greyscale, mirror, turn, crop, tilt), each re-encoded and decoded
again through ingest, as a re-shared copy would be.

The photos are the six in samples/ and a few more that ship inside scikit-image (no download).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from pipeline.ingest import ingest_bytes
from tests.hostile import LIMITS

ROOT: Final = Path(__file__).resolve().parent.parent
SAMPLES: Final = ROOT / "samples"
SAMPLE_NAMES: Final = tuple(sorted(p.stem for p in SAMPLES.glob("*.jpg")))
#: further photos and drawings bundled with scikit-image, for "different pictures never match"
SKIMAGE_NAMES: Final = (
    "brick", "cell", "coins", "grass", "gravel", "horse", "hubble_deep_field", "logo",
    "moon", "page", "retina", "text",
)

Edit = Callable[[Image.Image], Image.Image]


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / f"{name}.jpg").read_bytes()


def decode(data: bytes) -> npt.NDArray[np.uint8]:
    """Pixels as the pipeline sees them: through ingest (EXIF orientation, RGB)."""
    return ingest_bytes(data, **LIMITS).pixels


@cache
def sample(name: str) -> npt.NDArray[np.uint8]:
    return decode(sample_bytes(name))


@cache
def skimage_photo(name: str) -> npt.NDArray[np.uint8]:
    from skimage import data as skdata

    raw = np.asarray(getattr(skdata, name)())
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8) * 255
    if raw.ndim == 2:
        raw = np.stack([raw] * 3, axis=-1)
    return np.ascontiguousarray(raw[..., :3].astype(np.uint8))


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def reshared(pixels: npt.NDArray[np.uint8], edit: Edit, *, quality: int = 90) -> bytes:
    """The JPEG a person would re-send after this edit."""
    return jpeg(edit(Image.fromarray(pixels)), quality)


def half_size(im: Image.Image) -> Image.Image:
    return im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)


def greyscale(im: Image.Image) -> Image.Image:
    return im.convert("L")


def mirror(im: Image.Image) -> Image.Image:
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def turn_90(im: Image.Image) -> Image.Image:
    return im.transpose(Image.Transpose.ROTATE_90)


def unchanged(im: Image.Image) -> Image.Image:
    return im


def crop_centre(fraction: float) -> Edit:
    """Cut `fraction` of the width and of the height, half from each side."""

    def edit(im: Image.Image) -> Image.Image:
        dx, dy = round(im.width * fraction / 2), round(im.height * fraction / 2)
        return im.crop((dx, dy, im.width - dx, im.height - dy))

    return edit


def crop_edge(fraction: float) -> Edit:
    """Cut `fraction` of the width from the right-hand side only."""

    def edit(im: Image.Image) -> Image.Image:
        return im.crop((0, 0, im.width - round(im.width * fraction), im.height))

    return edit


def tilt(degrees: float) -> Edit:
    """Rotate by a few degrees, keeping the size (the corners come in black)."""

    def edit(im: Image.Image) -> Image.Image:
        return im.rotate(degrees, resample=Image.Resampling.BICUBIC)

    return edit


#: the edits a PDQ match must survive (issue 14), by name
SURVIVES: Final[dict[str, tuple[Edit, int]]] = {
    "half size": (half_size, 90),
    "JPEG quality 30": (unchanged, 30),
    "half size at quality 30": (half_size, 30),  # the re-sent photo of the motivating case
    "greyscale": (greyscale, 90),
    "mirror": (mirror, 90),
    "90° turn": (turn_90, 90),
}
#: the edits whose distances are measured and documented: PDQ is not built for them
LIMIT_EDITS: Final[dict[str, Edit]] = {
    "crop 2%": crop_centre(0.02),
    "crop 5%": crop_centre(0.05),
    "crop 10%": crop_centre(0.10),
    "crop 5% one side": crop_edge(0.05),
    "tilt 2°": tilt(2),
    "tilt 5°": tilt(5),
    "tilt 10°": tilt(10),
}
