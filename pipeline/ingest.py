"""Ingest: from untrusted upload bytes to decoded RGB pixels, or a typed `ImageError`.

This module owns the safe-decode boundary: the size limit, type sniffing from magic bytes, the
decompression-bomb guard (declared dimensions read from the header by us, before Pillow is
given the bytes), full decode with truncation treated as an error, EXIF orientation, and the
conversion of every accepted colour mode to 8-bit RGB.  Nothing outside it should call Pillow
on upload bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from dataclasses import dataclass, field, replace
from typing import Final, NoReturn

import numpy as np
import numpy.typing as npt
from PIL import (
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from models.pixels import DECODE_ERRORS, to_rgb, upright
from pipeline.errors import (
    ConfigurationError,
    ImageCorrupt,
    ImageEmpty,
    ImageError,
    ImageTooLarge,
    ImageTooManyPixels,
    ImageUnsupportedType,
)
from pipeline.hashing.pdq import DihedralPdq, pdq_dihedral

__all__ = ["MIME_TYPES", "IngestedImage", "ingest_bytes", "ingest_path", "sniff", "with_pdq"]

logger = logging.getLogger(__name__)

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
WEBP: Final = "image/webp"
GIF: Final = "image/gif"
MIME_TYPES: Final = frozenset({JPEG, PNG, WEBP, GIF})

# The one plugin Pillow may use for each sniffed type; MPO is how Pillow names a JPEG that
# carries extra pictures (phones write them), and only its first picture is decoded.
_PIL_FORMAT: Final = {JPEG: "JPEG", PNG: "PNG", WEBP: "WEBP", GIF: "GIF"}
_PIL_DETECTED: Final = {
    JPEG: frozenset({"JPEG", "MPO"}),
    PNG: frozenset({"PNG"}),
    WEBP: frozenset({"WEBP"}),
    GIF: frozenset({"GIF"}),
}
# Importing the plugins registers them, so Image.open(formats=[...]) never has to import
# every plugin Pillow ships on the first upload.
_PLUGINS: Final = (GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)
# EXIF orientation, the colour conversion to 8-bit RGB and the errors Pillow raises on
# malformed input are models.pixels': training and evaluation decode with the same ones.


@dataclass(frozen=True, slots=True)
class IngestedImage:
    """One accepted upload: who it is (sha256 of the bytes as received) and its upright pixels.

    `pixels` is a read-only, C-contiguous uint8 array of shape (height, width, 3) in RGB
    order; read-only because one decode is shared by the hashers, the scorers and the store.
    Equality and hashing use the identity fields only: the sha256 already pins the content.
    """

    sha256: str
    mime: str
    width: int
    height: int
    size_bytes: int
    pixels: npt.NDArray[np.uint8] = field(repr=False, compare=False)
    #: the eight dihedral PDQ hashes and quality (`with_pdq`), for the banks
    pdq: DihedralPdq | None = field(default=None, repr=False, compare=False)


def sniff(data: bytes) -> str:
    """The MIME type named by the magic bytes at the start of `data`.

    Never looks at a filename or a client's Content-Type: both are chosen by the uploader.
    Raises ImageEmpty for no bytes and ImageUnsupportedType for anything but JPEG, PNG, WebP
    and GIF (SVG, PDF, HTML, BMP, TIFF, HEIC, text, ...).
    """
    if not data:
        raise ImageEmpty()
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    raise ImageUnsupportedType()


def ingest_bytes(data: bytes, *, max_bytes: int, max_pixels: int) -> IngestedImage:
    """Check, decode and normalise one upload; raise an `ImageError` subclass if it is refused.

    Order matters: the size limit first (cheapest, and bounds all later work), then the type
    from magic bytes, then the declared dimensions against the pixel limit before Pillow has
    allocated anything, then a full decode in which truncation is an error.
    """
    if max_bytes <= 0 or max_pixels <= 0:
        raise ValueError("max_bytes and max_pixels must be positive")
    size = len(data)
    if size > max_bytes:
        _reject(ImageTooLarge(f"The upload is {size} bytes; the limit is {max_bytes}."), size)
    try:
        mime = sniff(data)
    except (ImageEmpty, ImageUnsupportedType) as exc:
        _reject(exc, size)
    try:
        pixels = _decode(data, mime, _pixel_cap(max_pixels))
    except (ImageCorrupt, ImageTooManyPixels, ImageUnsupportedType) as exc:
        _reject(exc, size, mime)
    height, width = pixels.shape[:2]
    return IngestedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
        width=width,
        height=height,
        size_bytes=size,
        pixels=pixels,
    )


def with_pdq(image: IngestedImage) -> IngestedImage:
    """The image with its PDQ hashes (the eight dihedral ones and the quality), for the hash
    banks: computed once, from the pixels this ingest decoded."""
    return replace(image, pdq=pdq_dihedral(image.pixels))


def ingest_path(path: str | os.PathLike[str], *, max_bytes: int, max_pixels: int) -> IngestedImage:
    """`ingest_bytes` on a file's contents; the name and extension of the file play no part."""
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    with open(path, "rb") as fh:
        # One byte past the limit is enough to know it is too large, however big the file is
        # (or however long a FIFO or device keeps producing bytes).
        data = fh.read(max_bytes + 1)
    return ingest_bytes(data, max_bytes=max_bytes, max_pixels=max_pixels)


# ---- internals ----------------------------------------------------------------------------
def _reject(exc: ImageError, size: int, mime: str | None = None) -> NoReturn:
    # Codes and sizes only: the bytes, their hash and any text Pillow read out of them stay out
    # of the logs.
    logger.debug("upload refused", extra={"code": exc.code, "size_bytes": size, "mime": mime})
    raise exc


def _pixel_cap(max_pixels: int) -> int:
    # Pillow's own global limit still applies inside Image.open and the GIF parser, and above it
    # Pillow warns or raises on its own terms; capping ours at it means every image Pillow would
    # complain about has already been refused by us, deterministically, with our error.
    ceiling = Image.MAX_IMAGE_PIXELS
    return max_pixels if ceiling is None else min(max_pixels, ceiling)


def _check_pixels(width: int, height: int, cap: int) -> None:
    if width * height > cap:
        raise ImageTooManyPixels(
            f"The image declares {width}x{height} pixels; the limit is {cap} pixels."
        )


def _decode(data: bytes, mime: str, cap: int) -> npt.NDArray[np.uint8]:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Something in this process told Pillow to pad truncated images with grey; we would
        # accept half an upload and score a picture the uploader never sent.  Fail loudly.
        raise ConfigurationError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled; ingest refuses to decode uploads"
        )
    if mime == WEBP and not WebPImagePlugin.SUPPORTED:
        raise ImageUnsupportedType("This installation of Pillow cannot decode WebP.")

    width, height = declared_size(data, mime)
    if width == 0 or height == 0:
        raise ImageCorrupt("The image declares no pixels.")
    _check_pixels(width, height, cap)

    try:
        # BytesIO over bytes shares the buffer until written to: no copy of the upload here.
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime]]) as im:
            if im.format not in _PIL_DETECTED[mime]:
                raise ImageCorrupt(f"The content is not a valid {mime} image.")
            # Pillow's reading of the header is the one its decoder will allocate for; if it
            # disagrees with ours, the larger of the two must pass.
            _check_pixels(im.width, im.height, cap)
            im.load()  # the first frame only, for GIF and animated WebP/PNG
            shown = upright(im)
            _check_pixels(shown.width, shown.height, cap)
            rgb = to_rgb(shown)
            if rgb is None:
                raise ImageUnsupportedType(
                    f"The image uses an unsupported colour mode ({shown.mode}).")
            return rgb
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooManyPixels() from exc
    except DECODE_ERRORS as exc:
        raise ImageCorrupt() from exc


# ---- declared dimensions, read before Pillow sees the bytes ---------------------------------
# Pillow's open already allocates for some formats (libwebp's animation decoder reserves two
# full canvases; a GIF frame with "restore to background" gets a fill of its extent), and its
# bomb check only warns below twice its global limit.  So each header is read here, as
# permissively as Pillow reads it, and the largest canvas any reading could yield is checked.
def declared_size(data: bytes, mime: str) -> tuple[int, int]:
    if mime == PNG:
        return _png_size(data)
    if mime == GIF:
        return _gif_size(data)
    if mime == WEBP:
        return _webp_size(data)
    return _jpeg_size(data)


def _png_size(data: bytes) -> tuple[int, int]:
    # The PNG specification, libpng and Pillow all want IHDR as the first chunk.
    if len(data) < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        raise ImageCorrupt("The PNG header is missing or truncated.")
    width, height = struct.unpack_from(">II", data, 16)
    return int(width), int(height)


def _gif_size(data: bytes) -> tuple[int, int]:
    if len(data) < 13:
        raise ImageCorrupt("The GIF header is truncated.")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if flags & 0x80:  # global colour table
        pos += 3 << ((flags & 7) + 1)
    n = len(data)
    # Walk to the first image descriptor: Pillow grows the canvas to cover the first frame's
    # extent (x + w, y + h), so a 1x1 screen may still hold a 65535x65535 frame.
    while pos < n:
        introducer = data[pos]
        if introducer == 0x2C:  # image descriptor
            if pos + 9 > n:
                break
            x, y, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return max(width, x + w), max(height, y + h)
        if introducer == 0x21:  # extension: label, then sub-blocks up to an empty one
            pos += 2
            while pos < n:
                length = data[pos]
                pos += 1 + length
                if length == 0:
                    break
        elif introducer == 0x3B:  # trailer
            break
        else:  # Pillow skips stray bytes between blocks, so must we
            pos += 1
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise ImageCorrupt("The WebP header is truncated.")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 > len(data):
        # libwebp reports a short file as "could not create decoder"; say what it is.
        raise ImageCorrupt("The WebP file is truncated.")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended format: the canvas, stored minus one, 24 bits each
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the key-frame start code
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageCorrupt("The WebP (VP8) header is invalid.")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature, then two 14-bit sizes stored minus one
        if data[20] != 0x2F:
            raise ImageCorrupt("The WebP (VP8L) header is invalid.")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageCorrupt("The WebP file has no image chunk.")


# JPEG markers that carry no length field (Pillow's table: JPG, RSTn, SOI, EOI, JPGn).
_JPEG_BARE: Final = frozenset({0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)})
# Frame headers: SOF0-15 except DHT (C4), JPG (C8) and DAC (CC); Pillow also reads DHP (DE).
_JPEG_SOF: Final = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xDE})


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # Mirrors Pillow's marker walk up to the first SOS.  libjpeg sizes its buffers from the
    # first frame header and Pillow from the last, so every one of them must pass the cap.
    width = height = 0
    n = len(data)
    pos = 3  # after FF D8 FF: the third byte is the first marker's FF, as Pillow reads it
    prefix = 0xFF
    while pos < n:
        if prefix != 0xFF:  # Pillow skips non-FF junk between segments
            prefix = data[pos]
            pos += 1
            continue
        marker = data[pos]
        pos += 1
        if marker == 0xFF:  # fill byte: the next byte is the marker
            continue
        if marker == 0x00:  # an escaped FF outside a segment: skip it
            prefix = data[pos] if pos < n else 0
            pos += 1
            continue
        if marker < 0xC0:
            break  # not a marker Pillow knows ("no marker found"): its open will fail
        if marker not in _JPEG_BARE:
            if pos + 2 > n:
                break
            (length,) = struct.unpack_from(">H", data, pos)
            if marker in _JPEG_SOF and pos + 7 <= n:
                h, w = struct.unpack_from(">HH", data, pos + 3)
                width, height = max(width, w), max(height, h)
            if marker == 0xDA:  # start of scan: the headers are over
                break
            pos += max(length, 2)  # Pillow reads a length below 2 as an empty segment
        if pos >= n:
            break
        prefix = data[pos]
        pos += 1
    if width == 0 and height == 0:
        raise ImageCorrupt("The JPEG has no frame header.")
    return width, height
