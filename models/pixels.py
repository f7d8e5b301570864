"""Decoded pictures to the pixels every model sees: EXIF orientation and 8-bit RGB.

One conversion for the upload path (`pipeline.ingest`, behind its safe-decode checks) and for
everything that decodes images to train, evaluate or compare models (`models.classifier.data`):
a model trained on pixels converted one way and served pixels converted another (a transparent
PNG black in training and white in production, 16-bit grey clipped in one and scaled in the
other) is scored on pictures it never learned from.
"""

from __future__ import annotations

import logging
import struct
import zlib
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image

__all__ = ["DECODE_ERRORS", "to_rgb", "upright"]

logger = logging.getLogger(__name__)

# Everything Pillow's parsers and decoders are known to raise on malformed input.  Warning is
# here because a process run with warnings as errors (the test suite, -W error) gets Pillow's
# complaints about a file (bad EXIF, invalid APNG, ...) raised mid-parse: the image was not
# decoded, so it is corrupt.  UnidentifiedImageError is an OSError.
DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    ArithmeticError,
    struct.error,
    zlib.error,
    Warning,
)

# EXIF orientation -> the transposition that displays the image upright; the same table as
# ImageOps.exif_transpose, applied without rewriting metadata we are about to discard.
ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
PLAIN_MODES: Final = frozenset({"1", "L", "P", "CMYK", "YCbCr"})
WIDE_GREY_MODES: Final = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
WHITE: Final = (255, 255, 255)


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 when absent, unreadable or nonsense)."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODE_ERRORS:
        # EXIF is metadata beside pixels that decoded fine: a malformed block costs the
        # orientation (shown as stored, as browsers do), not the picture.
        logger.debug("unreadable EXIF; orientation left as stored")
        return 1
    return value if isinstance(value, int) else 1


def upright(im: Image.Image) -> Image.Image:
    """The picture as a viewer shows it: its EXIF orientation applied."""
    method = ORIENTATION.get(orientation(im))
    return im if method is None else im.transpose(method)


def to_rgb(im: Image.Image) -> npt.NDArray[np.uint8] | None:
    """H x W x 3 uint8 RGB of a picture Pillow decoded: transparency composited over white,
    16-bit grey scaled (not clipped) to 8 bits.  The array may be read-only.  None for a
    colour mode with no faithful 8-bit RGB reading (F, HSV, LAB ...): the caller says so in
    its own terms (an upload's `image.unsupported_type`, a training set's error)."""
    mode = im.mode
    if mode in WIDE_GREY_MODES:
        return _wide_grey_to_rgb(im)
    if mode in ALPHA_MODES or "transparency" in im.info:
        # Composite over white: a transparent region is what a viewer would see as page
        # background, and a model scoring "black" there would see a different picture.
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, (0, 0), rgba)
        return as_array(out)
    if mode == "RGB":
        return as_array(im)
    if mode in PLAIN_MODES:
        return as_array(im.convert("RGB"))
    return None


def _wide_grey_to_rgb(im: Image.Image) -> npt.NDArray[np.uint8]:
    # Pillow's convert("L") clips 16-bit grey at 255, turning most of the range white; scale
    # the full 0..65535 range onto 0..255 instead (rounded, so 257*v maps back to v exactly).
    wide = np.asarray(im)
    grey16 = np.clip(wide, 0, 65535).astype(np.uint32, copy=False)
    grey = ((grey16 + 128) // 257).astype(np.uint8)
    transparency = im.info.get("transparency")
    if isinstance(transparency, int):
        grey[wide == transparency] = 255  # the one transparent grey level, over white
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    rgb.flags.writeable = False
    return rgb


def as_array(im: Image.Image) -> npt.NDArray[np.uint8]:
    """An RGB image's pixels, read-only, packed in one copy."""
    # np.asarray(im) goes through tobytes(), which packs the image in 64 KiB pieces and joins
    # them: a second full copy that costs as much as decoding a JPEG.  Packing it in one call
    # gives the same bytes in one buffer.  The encoder is Pillow-internal, so any surprise
    # falls back to the public path.  numpy wraps the immutable bytes: read-only by design.
    width, height = im.size
    size = width * height * 3
    try:
        encoder = Image._getencoder("RGB", "raw", "RGB")
        encoder.setimage(im.im, (0, 0, width, height))
        _, status, data = encoder.encode(size)
    except (AttributeError, TypeError, ValueError, OSError):  # pragma: no cover - Pillow changed
        status, data = -1, b""
    if status != 1 or len(data) != size:  # pragma: no cover - Pillow changed
        data = im.tobytes()
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
