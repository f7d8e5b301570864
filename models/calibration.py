"""A benign calibration set for reduced-precision models, built from photos by transformation.

Base photos come from scikit-image's data module (when installed) and from any folder of
benign JPEGs the caller names (the repository's `samples/`); each derived image is a crop,
flip, rotation, rescale, colour or blur change of one or a 2 x 2 mosaic of bases, rendered at
the batch job's typical 1024 x 768.  Two seeds give two disjoint-by-construction sets: one to
calibrate the quantiser, one held out to measure agreement.  Nothing here is harmful content.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from models.base import RGBImage

logger = logging.getLogger(__name__)

#: scikit-image photos that ship inside its wheel (no download), all benign
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera",
    "hubble_deep_field", "retina", "coins", "moon", "horse", "clock", "cell", "colorwheel",
    "cat", "brick", "grass", "gravel", "text", "page",
)
#: the seed of the set the quantiser calibrates on, and of the held-out set
CALIBRATION_SEED = 1
HELD_OUT_SEED = 2


def _rgb(a: npt.NDArray[np.generic]) -> RGBImage:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def base_photos(folders: Sequence[Path] = ()) -> list[RGBImage]:
    """Every benign base photo available here: scikit-image's, then each folder's JPEGs."""
    photos: list[RGBImage] = []
    skdata: Any
    try:
        import skimage.data as skdata
    except ImportError:  # scikit-image is a dev dependency; the folders still work
        skdata = None
    if skdata is not None:
        for name in SKIMAGE_PHOTOS:
            try:
                photos.append(_rgb(getattr(skdata, name)()))
            except Exception:  # a photo that needs a download (pooch) is skipped
                logger.debug("skipping scikit-image photo", extra={"photo": name})
    for folder in folders:
        for path in sorted(Path(folder).glob("*.jpg")):
            with Image.open(path) as im:
                photos.append(_rgb(np.asarray(im.convert("RGB"))))
    return photos


def _fit(image: RGBImage, width: int, height: int) -> RGBImage:
    return np.asarray(
        cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
    )


def _transform(rng: np.random.Generator, bases: Sequence[RGBImage], w: int, h: int) -> RGBImage:
    if rng.random() < 0.25 and len(bases) >= 4:
        picks = rng.choice(len(bases), size=4, replace=False)
        tiles = [_fit(bases[int(i)], w // 2, h // 2) for i in picks]
        img = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    else:
        src = bases[int(rng.integers(len(bases)))]
        sh, sw = src.shape[:2]
        # a crop of 60-100 % of each side, then the 4:3 frame the batch job sees
        ch, cw = int(sh * rng.uniform(0.6, 1.0)), int(sw * rng.uniform(0.6, 1.0))
        y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
        img = _fit(np.ascontiguousarray(src[y0 : y0 + ch, x0 : x0 + cw]), w, h)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.15:
        img = np.ascontiguousarray(np.rot90(img, 2))
    f = img.astype(np.float32)
    f = f * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)  # contrast, brightness
    if rng.random() < 0.2:
        grey = f.mean(axis=2, keepdims=True)
        f = np.repeat(grey, 3, axis=2)
    out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 2.0)), dtype=np.uint8)
    return np.ascontiguousarray(out)


def derived_images(
    bases: Sequence[RGBImage], n: int, *, seed: int, width: int = 1024, height: int = 768
) -> list[RGBImage]:
    """`n` transformed images (deterministic for a seed)."""
    if not bases:
        raise ValueError("no base photos: install scikit-image or pass a folder of JPEGs")
    rng = np.random.default_rng(seed)
    return [_transform(rng, bases, width, height) for _ in range(n)]


def as_jpeg(image: RGBImage, quality: int = 90) -> bytes:
    """The JPEG bytes of an image (what a batch job would read from storage)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
