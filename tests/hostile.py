"""Hostile and edge-case upload files, built in memory by the tests.

Every picture here is synthetic (coloured blocks, gradients) or a benign photo that ships with
scikit-image; the hostility is all in the container: truncation, lying headers, decompression
bombs, polyglots, unsupported types.  `CORPUS` maps a name to a factory and to what ingest must
make of the file under `LIMITS`: an error code, or `ACCEPT`.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

Factory = Callable[[], bytes]

ACCEPT: Final = "accept"
#: The defaults of Settings.max_upload_bytes and Settings.max_pixels.
LIMITS: Final = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 50_000_000}

RED: Final = (255, 0, 0)
GREEN: Final = (0, 255, 0)
BLUE: Final = (0, 0, 255)
YELLOW: Final = (255, 255, 0)
WHITE: Final = (255, 255, 255)


# ---- benign pictures ------------------------------------------------------------------------
def quadrants(width: int, height: int) -> npt.NDArray[np.uint8]:
    """An asymmetric test card: red top-left, green top-right, blue bottom-left, yellow
    bottom-right; any rotation or flip moves a known colour to a known corner."""
    arr = np.empty((height, width, 3), dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    arr[:h2, :w2] = RED
    arr[:h2, w2:] = GREEN
    arr[h2:, :w2] = BLUE
    arr[h2:, w2:] = YELLOW
    return arr


def gradient(width: int = 96, height: int = 64) -> npt.NDArray[np.uint8]:
    """A smooth RGB gradient: something for lossy encoders to chew on."""
    x = np.linspace(0, 255, width, dtype=np.float32)[np.newaxis, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, np.newaxis]
    r = np.broadcast_to(x, (height, width))
    g = np.broadcast_to(y, (height, width))
    b = (r + g) / 2
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def noise(width: int = 128, height: int = 128, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Random pixels: large encodings, so truncating them cuts into the pixel data."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(img: Image.Image | npt.NDArray[np.uint8], fmt: str, **params: Any) -> bytes:
    """Encode with Pillow into bytes."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


# ---- PNG, built by hand so that headers can lie ----------------------------------------------
def png_chunk(tag: bytes, body: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(tag + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


def png_from_rows(
    width: int,
    height: int,
    *,
    bit_depth: int,
    colour_type: int,
    rows: bytes,
    extra_chunks: bytes = b"",
) -> bytes:
    """A PNG whose IHDR says `width`x`height` and whose IDAT inflates to `rows` (raw scanlines,
    each already prefixed by its filter byte), whatever the two have to do with each other.
    `extra_chunks` (already framed by `png_chunk`) go between IHDR and IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra_chunks
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png_rgb16(pixels: npt.NDArray[np.uint16]) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one) from an H x W x 3 uint16 array."""
    height, width = pixels.shape[:2]
    big_endian = pixels.astype(">u2").reshape(height, width * 3)
    rows = b"".join(b"\x00" + row.tobytes() for row in big_endian)
    return png_from_rows(width, height, bit_depth=16, colour_type=2, rows=rows)


@cache
def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A grey PNG declaring `width`x`height` pixels in a file of well under a kilobyte."""
    return png_from_rows(width, height, bit_depth=8, colour_type=0, rows=b"\x00" * 4096)


# ---- GIF, built by hand --------------------------------------------------------------------
# LZW data for one pixel of colour 0 with a minimum code size of 2.
_GIF_ONE_PIXEL: Final = b"\x02\x02\x44\x01\x00"


def gif_one_frame(
    screen: tuple[int, int], frame: tuple[int, int, int, int] = (0, 0, 1, 1)
) -> bytes:
    """A GIF with logical screen `screen` and one 1-pixel-of-data frame at `frame`
    (x, y, width, height): the frame's declared extent is what the decoder sizes for."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", *frame, 0)
    return header + descriptor + _GIF_ONE_PIXEL + b";"


# ---- WebP ----------------------------------------------------------------------------------
def _le24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def _riff(body: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_chunk(tag: bytes, payload: bytes) -> bytes:
    pad = b"\x00" if len(payload) % 2 else b""
    return tag + struct.pack("<I", len(payload)) + payload + pad


@cache
def _vp8l_1x1() -> bytes:
    """The VP8L chunk (header included) of a 1x1 lossless WebP encoded by libwebp."""
    data = encode(Image.new("RGB", (1, 1), RED), "WEBP", lossless=True)
    assert data[12:16] == b"VP8L", "libwebp wrote an extended file for a 1x1 image"
    return data[12:]


def webp_animated_canvas(width: int, height: int) -> bytes:
    """A valid animated WebP: a `width`x`height` canvas holding a single 1x1 frame.

    libwebp's animation decoder allocates the whole canvas, twice, when it is created."""
    vp8x = _webp_chunk(
        b"VP8X", bytes([0x02]) + b"\x00\x00\x00" + _le24(width - 1) + _le24(height - 1)
    )
    anim = _webp_chunk(b"ANIM", struct.pack("<IH", 0xFFFFFFFF, 0))
    frame_header = _le24(0) + _le24(0) + _le24(0) + _le24(0) + _le24(100) + b"\x00"
    anmf = _webp_chunk(b"ANMF", frame_header + _vp8l_1x1())
    return _riff(b"WEBP" + vp8x + anim + anmf)


def webp_vp8l_declaring(width: int, height: int) -> bytes:
    """A lossless WebP whose bitstream header declares `width`x`height` (max 16384 each)."""
    chunk = bytearray(_vp8l_1x1())
    (bits,) = struct.unpack_from("<I", chunk, 9)
    bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", chunk, 9, bits)
    return _riff(b"WEBP" + bytes(chunk))


def webp_vp8_declaring(width: int, height: int) -> bytes:
    """A lossy WebP whose key-frame header declares `width`x`height` (max 16383 each)."""
    data = bytearray(encode(gradient(16, 16), "WEBP", quality=80))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    struct.pack_into("<HH", data, 26, width, height)
    return bytes(data)


# ---- JPEG ----------------------------------------------------------------------------------
def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset of its FF, total length) of each header segment up to and including
    SOS, for a well-formed JPEG such as the ones Pillow writes."""
    out: list[tuple[int, int, int]] = []
    pos = 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        out.append((marker, pos, 2 + length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def jpeg_with_sof_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with every frame header (SOF0/SOF2) rewritten to declare `width`x`height`."""
    out = bytearray(data)
    for marker, pos, _ in jpeg_segments(data):
        if marker in (0xC0, 0xC2):
            struct.pack_into(">HH", out, pos + 5, height, width)
    return bytes(out)


def jpeg_with_extra_sof_first(data: bytes, width: int, height: int) -> bytes:
    """`data` with a second, `width`x`height` frame header inserted before its own one.

    libjpeg sizes itself from the first frame header, Pillow from the last: a check that
    trusts Pillow's `size` alone would pass this file."""
    for marker, pos, length in jpeg_segments(data):
        if marker == 0xC0:
            sof = bytearray(data[pos : pos + length])
            struct.pack_into(">HH", sof, 5, height, width)
            return data[:pos] + bytes(sof) + data[pos:]
    raise ValueError("no SOF0 segment")


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def jpeg_oriented(orientation: int, width: int = 64, height: int = 32) -> bytes:
    """`quadrants(width, height)` stored as-is, with EXIF saying how to turn it upright."""
    return encode(
        quadrants(width, height), "JPEG", quality=95, exif=exif_with_orientation(orientation)
    )


def truncate(data: bytes, fraction: float) -> bytes:
    """The first `fraction` of `data`: an interrupted upload."""
    return data[: int(len(data) * fraction)]


def _garbage(n: int, seed: int, *, no_ff: bool = False) -> bytes:
    data = random.Random(seed).randbytes(n)
    # Without FF bytes there are no markers in it: no frame header can appear by chance.
    return data.replace(b"\xff", b"\x00") if no_ff else data


# ---- the corpus ----------------------------------------------------------------------------
@cache
def _astronaut_jpeg() -> bytes:
    from skimage import data as skdata

    # A benign, public-domain NASA portrait that ships inside scikit-image (no download).
    astronaut: Callable[[], npt.NDArray[np.uint8]] = skdata.astronaut
    return encode(astronaut(), "JPEG", quality=90)


@cache
def _jpeg() -> bytes:
    return encode(noise(), "JPEG", quality=90)


@cache
def _png() -> bytes:
    return encode(noise(), "PNG")


@cache
def _webp() -> bytes:
    return encode(noise(), "WEBP", quality=80)


@cache
def _gif() -> bytes:
    return encode(Image.fromarray(noise()).convert("P"), "GIF")


def _png_rgb16_ramp() -> bytes:
    ramp = np.array([0, 257, 32896, 65535, 65280, 1000], dtype=np.uint16)
    return png_rgb16(np.stack([ramp, ramp[::-1], np.full_like(ramp, 32768)], axis=1)[None])


def _png_palette_transparent() -> bytes:
    img = Image.fromarray(quadrants(16, 16)).quantize(4)
    # Make whichever palette entry holds the red quadrant fully transparent.
    red_index = img.getpixel((0, 0))
    return encode(img, "PNG", transparency=red_index)


def _png_rgba() -> bytes:
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[:4, :] = (0, 0, 255, 255)  # opaque blue
    arr[4:, :4] = (255, 0, 0, 0)  # fully transparent red: must come out white
    arr[4:, 4:] = (0, 0, 0, 128)  # half-transparent black: mid grey over white
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def _gif_animated() -> bytes:
    frames = [Image.new("P", (16, 16), 0) for _ in range(3)]
    palette = [*RED, *BLUE, *GREEN] + [0] * (253 * 3)
    for i, frame in enumerate(frames):
        frame.putpalette(palette)
        frame.paste(i, (0, 0, 16, 16))
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _jpeg_mpo() -> bytes:
    # A multi-picture JPEG (what phones write for depth or stereo): only the first is decoded.
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (24, 24), BLUE)
    return encode(first, "MPO", save_all=True, append_images=[second])


def _webp_animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def _jpeg_cmyk() -> bytes:
    return encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)


def _jpeg_exif_garbage() -> bytes:
    # A JFIF APP0 with a density first, so Pillow's open does not read the EXIF for a DPI (it
    # would warn there, and whether a warning is an error is the process's choice); then an APP1
    # that claims to be EXIF and holds noise.  Only the orientation lookup reads it.
    base = encode(gradient(), "JPEG", dpi=(72, 72))
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + _garbage(64, 7)
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    _, pos, length = jpeg_segments(base)[0]  # APP0
    end = pos + length
    return base[:end] + segment + base[end:]


def _jpeg_garbage_scan() -> bytes:
    base = _jpeg()
    _, pos, length = jpeg_segments(base)[-1]  # SOS
    end = pos + length
    return base[:end] + _garbage(len(base) - end - 2, 5, no_ff=True) + b"\xff\xd9"


def _gif_frame_beyond_screen() -> bytes:
    # A 16x16 frame on a 4x4 logical screen: Pillow grows the canvas to hold the frame.
    data = bytearray(encode(Image.new("P", (16, 16), 0), "GIF"))
    struct.pack_into("<HH", data, 6, 4, 4)
    return bytes(data)


def _png_bad_ihdr_crc() -> bytes:
    data = bytearray(_png())
    data[29] ^= 0xFF  # the first byte of IHDR's CRC
    return bytes(data)


def _oversize() -> bytes:
    return b"\xff\xd8\xff" + bytes(LIMITS["max_bytes"] - 2)


_SVG: Final = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<script>alert(1)</script><rect width="10" height="10"/></svg>\n'
)
_PDF: Final = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
_HTML: Final = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>\n"

CORPUS: Final[dict[str, tuple[Factory, str]]] = {
    # -- accepted, including the awkward ones
    "jpeg_photo": (_astronaut_jpeg, ACCEPT),
    "jpeg_noise": (_jpeg, ACCEPT),
    "jpeg_progressive": (lambda: encode(gradient(), "JPEG", progressive=True), ACCEPT),
    "jpeg_grey": (lambda: encode(Image.fromarray(gradient()).convert("L"), "JPEG"), ACCEPT),
    "jpeg_cmyk": (_jpeg_cmyk, ACCEPT),
    "jpeg_mpo": (_jpeg_mpo, ACCEPT),
    "jpeg_exif_rotated": (lambda: jpeg_oriented(6), ACCEPT),
    "jpeg_exif_garbage": (_jpeg_exif_garbage, ACCEPT),
    "jpeg_html_polyglot": (lambda: _jpeg() + _HTML, ACCEPT),
    # libjpeg decodes noise in the entropy-coded data as noise, as browsers do: what a person
    # would be shown is what gets scored.
    "jpeg_garbage_scan": (_jpeg_garbage_scan, ACCEPT),
    "png_rgb": (_png, ACCEPT),
    "png_grey": (lambda: encode(Image.fromarray(gradient()).convert("L"), "PNG"), ACCEPT),
    "png_grey16": (
        lambda: encode(Image.fromarray(np.arange(0, 65536, 257, dtype=np.uint16)[None]), "PNG"),
        ACCEPT,
    ),
    "png_rgb16": (_png_rgb16_ramp, ACCEPT),
    "png_palette_transparent": (_png_palette_transparent, ACCEPT),
    "png_rgba": (_png_rgba, ACCEPT),
    "png_grey_alpha": (lambda: encode(Image.new("LA", (8, 8), (0, 0)), "PNG"), ACCEPT),
    "png_bilevel": (lambda: encode(Image.new("1", (9, 7), 1), "PNG"), ACCEPT),
    "png_zip_polyglot": (lambda: _png() + b"PK\x05\x06" + bytes(18), ACCEPT),
    "webp_lossy": (_webp, ACCEPT),
    "webp_lossless": (lambda: encode(gradient(), "WEBP", lossless=True), ACCEPT),
    "webp_alpha": (lambda: encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "WEBP"), ACCEPT),
    "webp_animated": (_webp_animated, ACCEPT),
    "webp_animated_small_canvas": (lambda: webp_animated_canvas(64, 64), ACCEPT),
    "gif_static": (_gif, ACCEPT),
    "gif_animated": (_gif_animated, ACCEPT),
    "gif_frame_beyond_screen": (_gif_frame_beyond_screen, ACCEPT),
    # -- empty, too large, or not one of our types (the name and extension never matter)
    "empty": (lambda: b"", "image.empty"),
    "oversize": (_oversize, "image.too_large"),
    "text": (lambda: b"just some text, no image here\n", "image.unsupported_type"),
    "svg": (lambda: _SVG, "image.unsupported_type"),
    "pdf": (lambda: _PDF, "image.unsupported_type"),
    "html": (lambda: _HTML, "image.unsupported_type"),
    "html_then_png": (lambda: _HTML + _png(), "image.unsupported_type"),
    "bmp": (lambda: encode(gradient(), "BMP"), "image.unsupported_type"),
    "tiff": (lambda: encode(gradient(), "TIFF"), "image.unsupported_type"),
    "ico": (lambda: encode(gradient(32, 32), "ICO"), "image.unsupported_type"),
    "heic_header": (
        lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
        "image.unsupported_type",
    ),
    "riff_wave": (lambda: b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28), "image.unsupported_type"),
    "gzip": (lambda: zlib.compress(_SVG, wbits=31), "image.unsupported_type"),
    "jpeg_magic_only": (lambda: b"\xff\xd8", "image.unsupported_type"),
    # -- right magic, broken inside
    "jpeg_truncated": (lambda: truncate(_jpeg(), 0.6), "image.corrupt"),
    "jpeg_garbage_after_soi": (
        lambda: b"\xff\xd8\xff" + _garbage(4096, 1, no_ff=True),
        "image.corrupt",
    ),
    "jpeg_no_scan": (lambda: _jpeg()[: jpeg_segments(_jpeg())[-1][1]], "image.corrupt"),
    "png_truncated": (lambda: truncate(_png(), 0.6), "image.corrupt"),
    "png_bad_ihdr_crc": (_png_bad_ihdr_crc, "image.corrupt"),
    "png_garbage_after_magic": (lambda: _png()[:8] + _garbage(512, 2), "image.corrupt"),
    "png_zero_width": (
        lambda: png_from_rows(0, 10, bit_depth=8, colour_type=0, rows=b"\x00" * 10),
        "image.corrupt",
    ),
    "webp_truncated": (lambda: truncate(_webp(), 0.6), "image.corrupt"),
    "webp_garbage": (
        lambda: _riff(b"WEBP" + _webp_chunk(b"VP8 ", _garbage(256, 3))),
        "image.corrupt",
    ),
    "gif_truncated": (lambda: truncate(_gif(), 0.6), "image.corrupt"),
    "gif_garbage_after_magic": (
        lambda: b"GIF89a" + struct.pack("<HH", 10, 10) + _garbage(256, 4),
        "image.corrupt",
    ),
    # -- decompression bombs: tiny files declaring huge canvases
    "png_bomb_30000": (lambda: png_bomb(30_000, 30_000), "image.too_many_pixels"),
    "png_bomb_100000": (lambda: png_bomb(100_000, 100_000), "image.too_many_pixels"),
    "png_bomb_wide": (lambda: png_bomb(2**31 - 1, 1), "image.too_many_pixels"),
    "gif_screen_bomb": (lambda: gif_one_frame((65535, 65535)), "image.too_many_pixels"),
    "gif_frame_bomb": (
        lambda: gif_one_frame((1, 1), (0, 0, 65535, 65535)),
        "image.too_many_pixels",
    ),
    "webp_canvas_bomb": (lambda: webp_animated_canvas(16383, 16383), "image.too_many_pixels"),
    "webp_vp8l_bomb": (lambda: webp_vp8l_declaring(16384, 16384), "image.too_many_pixels"),
    "webp_vp8_bomb": (lambda: webp_vp8_declaring(16383, 16383), "image.too_many_pixels"),
    "jpeg_sof_bomb": (lambda: jpeg_with_sof_size(_jpeg(), 65500, 65500), "image.too_many_pixels"),
    "jpeg_progressive_sof_bomb": (
        lambda: jpeg_with_sof_size(encode(gradient(), "JPEG", progressive=True), 65500, 65500),
        "image.too_many_pixels",
    ),
    "jpeg_hidden_sof_bomb": (
        lambda: jpeg_with_extra_sof_first(_jpeg(), 65500, 65500),
        "image.too_many_pixels",
    ),
}

#: The bombs, for tests that prove they are refused before Pillow is handed the bytes.
BOMBS: Final = tuple(name for name, (_, code) in CORPUS.items() if code == "image.too_many_pixels")


def seeds() -> dict[str, bytes]:
    """Small valid files of each accepted type, for mutation-based fuzzing."""
    small = gradient(24, 16)
    return {
        "jpeg": encode(small, "JPEG"),
        "jpeg_progressive": encode(small, "JPEG", progressive=True),
        "png": encode(small, "PNG"),
        "png_palette": encode(Image.fromarray(small).quantize(8), "PNG", transparency=0),
        "webp": encode(small, "WEBP"),
        "webp_lossless": encode(small, "WEBP", lossless=True),
        "gif": _gif_animated(),
    }
