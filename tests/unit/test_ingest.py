"""Ingest: every hostile file gets its error code, every accepted one becomes upright 8-bit RGB."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import struct
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from pipeline.errors import ConfigurationError, ImageError
from pipeline.ingest import MIME_TYPES, IngestedImage, ingest_bytes, ingest_path, sniff
from tests.hostile import (
    ACCEPT,
    BLUE,
    BOMBS,
    CORPUS,
    GREEN,
    LIMITS,
    RED,
    WHITE,
    YELLOW,
    encode,
    gradient,
    jpeg_oriented,
    png_bomb,
    png_chunk,
    png_from_rows,
    quadrants,
    seeds,
)

# JPEG is lossy: solid blocks come back within a few levels of what was drawn.
JPEG_TOLERANCE = 12


def _ingest(data: bytes) -> IngestedImage:
    return ingest_bytes(data, **LIMITS)


def _code(data: bytes, **limits: int) -> str:
    with pytest.raises(ImageError) as info:
        ingest_bytes(data, **{**LIMITS, **limits})
    return info.value.code


def _assert_colour(
    pixels: npt.NDArray[np.uint8], yx: tuple[int, int], rgb: tuple[int, int, int], tol: int = 0
) -> None:
    got = pixels[yx].astype(int)
    assert np.abs(got - np.array(rgb)).max() <= tol, f"{yx}: {got.tolist()} != {rgb}"


# ---- the corpus ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_gets_its_expected_outcome(name: str) -> None:
    factory, expected = CORPUS[name]
    data = factory()
    if expected != ACCEPT:
        assert _code(data) == expected
        return
    result = _ingest(data)
    assert result.mime in MIME_TYPES
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size_bytes == len(data)
    assert result.pixels.dtype == np.uint8
    assert result.pixels.shape == (result.height, result.width, 3)
    assert result.pixels.flags.c_contiguous


@pytest.mark.parametrize("name", BOMBS)
def test_bombs_are_refused_before_pillow_sees_them(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("Image.open was reached with a decompression bomb")

    monkeypatch.setattr(Image, "open", must_not_open)
    data = CORPUS[name][0]()
    tracemalloc.start()
    try:
        assert _code(data) == "image.too_many_pixels"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Python-side allocations (numpy included) stay tiny: nothing was sized from the header.
    assert peak < 1_000_000


def test_pixel_cap_boundary_is_inclusive() -> None:
    data = encode(gradient(40, 25), "PNG")
    assert _ingest(data).width == 40
    assert ingest_bytes(data, max_bytes=LIMITS["max_bytes"], max_pixels=1000).height == 25
    assert _code(data, max_pixels=999) == "image.too_many_pixels"


def test_pillow_global_limit_caps_ours_without_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Above Pillow's own limit Pillow would warn (or raise) on its terms; ours refuses first.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(gradient(64, 64), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _code(data, max_pixels=10**9) == "image.too_many_pixels"


def test_pillow_global_limit_may_be_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert ingest_bytes(encode(gradient(), "PNG"), max_bytes=10**6, max_pixels=10**4).width == 96


def test_cap_applies_to_pillows_reading_of_the_header_too() -> None:
    # Pillow grows a GIF's canvas to fit its first frame; the frame lies beyond a 4x4 screen.
    data = CORPUS["gif_frame_beyond_screen"][0]()
    assert _ingest(data).width == 16
    assert _code(data, max_pixels=16 * 16 - 1) == "image.too_many_pixels"


def test_webp_bomb_builder_makes_valid_files() -> None:
    # The canvas bomb is the same structure as this small one, which libwebp decodes.
    small = CORPUS["webp_animated_small_canvas"][0]()
    assert (_ingest(small).width, _ingest(small).height) == (64, 64)


def test_real_png_bomb_with_valid_zlib_stream_is_refused_by_declared_size() -> None:
    assert _code(png_bomb(30_000, 30_000)) == "image.too_many_pixels"


# ---- limits and order of checks -------------------------------------------------------------
def test_size_is_checked_before_type() -> None:
    assert _code(b"<svg/>" * 100, max_bytes=599) == "image.too_large"
    assert _code(b"<svg/>" * 100, max_bytes=600) == "image.unsupported_type"


def test_size_limit_is_inclusive() -> None:
    data = encode(gradient(), "PNG")
    assert ingest_bytes(data, max_bytes=len(data), max_pixels=10**6).size_bytes == len(data)
    assert _code(data, max_bytes=len(data) - 1) == "image.too_large"


@pytest.mark.parametrize("limits", [{"max_bytes": 0}, {"max_pixels": 0}, {"max_pixels": -1}])
def test_nonsense_limits_are_a_programming_error(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ingest_bytes(b"x", **{**LIMITS, **limits})


def test_truncated_images_refused_even_if_pillow_was_told_to_pad_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigurationError):
        _ingest(CORPUS["jpeg_truncated"][0]())


# ---- sniffing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"GIF87a....", "image/gif"),
        (b"GIF89a....", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
    ],
)
def test_sniff_reads_magic_bytes(data: bytes, mime: str) -> None:
    assert sniff(data) == mime


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8",
        b"\x89PNG",
        b"GIF88a",
        b"RIFF\x00\x00\x00\x00WAVE",
        b"BM\x00\x00",
        b"II*\x00",
        b"MM\x00*",
        b"%PDF-1.7",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b" \x89PNG\r\n\x1a\n",
    ],
)
def test_sniff_refuses_everything_else(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        sniff(data)
    assert info.value.code == "image.unsupported_type"


def test_sniff_empty() -> None:
    with pytest.raises(ImageError) as info:
        sniff(b"")
    assert info.value.code == "image.empty"


@pytest.mark.parametrize(
    ("filename", "corpus_name", "expected"),
    [
        ("holiday.jpg", "png_rgb", "image/png"),
        ("holiday.png", "webp_lossy", "image/webp"),
        ("no_extension", "gif_static", "image/gif"),
        ("looks-safe.png", "html", "image.unsupported_type"),
        ("drawing.svg.jpg", "svg", "image.unsupported_type"),
        ("photo.jpeg", "bmp", "image.unsupported_type"),
    ],
)
def test_names_and_extensions_play_no_part(
    tmp_path: Path, filename: str, corpus_name: str, expected: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(CORPUS[corpus_name][0]())
    if expected.startswith("image/"):
        assert ingest_path(path, **LIMITS).mime == expected
    else:
        with pytest.raises(ImageError) as info:
            ingest_path(path, **LIMITS)
        assert info.value.code == expected


def test_ingest_path_reads_at_most_one_byte_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with path.open("wb") as fh:
        fh.write(b"\xff\xd8\xff")
        fh.truncate(1 << 30)  # sparse: a gibibyte on paper, nothing on disk
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as info:
            ingest_path(path, max_bytes=4096, max_pixels=10**6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "image.too_large"
    assert peak < 1_000_000


def test_ingest_path_matches_ingest_bytes(tmp_path: Path) -> None:
    data = jpeg_oriented(6)
    path = tmp_path / "x"
    path.write_bytes(data)
    from_path, from_bytes = ingest_path(path, **LIMITS), _ingest(data)
    assert from_path == from_bytes
    assert np.array_equal(from_path.pixels, from_bytes.pixels)


# ---- identity --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["jpeg_exif_rotated", "jpeg_html_polyglot", "png_rgba"])
def test_sha256_is_of_the_bytes_as_received(name: str) -> None:
    data = CORPUS[name][0]()
    result = _ingest(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.sha256 != hashlib.sha256(result.pixels.tobytes()).hexdigest()


def test_result_is_immutable_and_never_prints_pixels() -> None:
    result = _ingest(CORPUS["png_rgb"][0]())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.width = 1  # type: ignore[misc]
    assert not result.pixels.flags.writeable
    assert "pixels" not in repr(result)
    again = _ingest(CORPUS["png_rgb"][0]())
    assert result == again and hash(result) == hash(again)


def test_rejections_are_logged_without_content(caplog: pytest.LogCaptureFixture) -> None:
    svg = CORPUS["svg"][0]()
    with caplog.at_level(logging.DEBUG, logger="pipeline.ingest"), pytest.raises(ImageError):
        _ingest(svg)
    (record,) = caplog.records
    assert record.code == "image.unsupported_type"  # type: ignore[attr-defined]
    assert record.size_bytes == len(svg)  # type: ignore[attr-defined]
    assert "svg" not in record.getMessage() and "script" not in str(record.__dict__)


# ---- orientation -----------------------------------------------------------------------------
def test_exif_orientation_6_turns_the_image_clockwise() -> None:
    # Stored 64 wide x 32 high; orientation 6 means "turn 90 degrees clockwise to view".
    result = _ingest(jpeg_oriented(6, width=64, height=32))
    assert (result.width, result.height) == (32, 64)
    px, last_x, last_y = result.pixels, 31, 63
    _assert_colour(px, (2, 2), BLUE, JPEG_TOLERANCE)  # was bottom-left
    _assert_colour(px, (2, last_x - 2), RED, JPEG_TOLERANCE)  # was top-left
    _assert_colour(px, (last_y - 2, 2), YELLOW, JPEG_TOLERANCE)  # was bottom-right
    _assert_colour(px, (last_y - 2, last_x - 2), GREEN, JPEG_TOLERANCE)  # was top-right


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    data = jpeg_oriented(orientation, width=48, height=16)
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    result = _ingest(data)
    assert np.array_equal(result.pixels, expected)
    swapped = orientation >= 5
    assert (result.width, result.height) == ((16, 48) if swapped else (48, 16))


def test_unreadable_exif_leaves_the_image_as_stored() -> None:
    result = _ingest(CORPUS["jpeg_exif_garbage"][0]())
    assert (result.width, result.height) == gradient().shape[1::-1]


# ---- colour modes ----------------------------------------------------------------------------
def test_rgba_is_composited_over_white() -> None:
    px = _ingest(CORPUS["png_rgba"][0]()).pixels
    _assert_colour(px, (0, 0), BLUE)  # opaque
    _assert_colour(px, (7, 0), WHITE)  # fully transparent red
    _assert_colour(px, (7, 7), (127, 127, 127), tol=1)  # half-transparent black


def test_palette_transparency_is_composited_over_white() -> None:
    px = _ingest(CORPUS["png_palette_transparent"][0]()).pixels
    _assert_colour(px, (0, 0), WHITE)  # the red entry was the transparent one
    _assert_colour(px, (0, 15), GREEN)
    _assert_colour(px, (15, 0), BLUE)
    _assert_colour(px, (15, 15), YELLOW)


def test_grey_alpha_and_webp_alpha_are_composited_over_white() -> None:
    for name in ("png_grey_alpha", "webp_alpha"):
        assert (_ingest(CORPUS[name][0]()).pixels == 255).all(), name


def test_grey16_is_scaled_not_clipped() -> None:
    # The file holds 0, 257, 514, ... 65535: exactly 0..255 once scaled.
    px = _ingest(CORPUS["png_grey16"][0]()).pixels
    assert np.array_equal(px[0, :, 0], np.arange(256))
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 0], px[..., 2])


def test_grey16_transparent_level_becomes_white() -> None:
    values = np.array([0, 1000, 65535, 1000], dtype=">u2")
    rows = b"\x00" + values.tobytes()
    data = png_from_rows(
        4, 1, bit_depth=16, colour_type=0, rows=rows,
        extra_chunks=png_chunk(b"tRNS", struct.pack(">H", 1000)),
    )  # fmt: skip
    px = _ingest(data).pixels
    assert px[0, :, 0].tolist() == [0, 255, 255, 255]


def test_rgb16_is_scaled_not_clipped() -> None:
    # Red ramps up 0, 257, 32896, 65535, 65280, 1000; green is the same backwards; blue is 32768.
    px = _ingest(CORPUS["png_rgb16"][0]()).pixels.astype(int)
    expected_red = np.array([0, 1, 128, 255, 255, 4])
    assert np.abs(px[0, :, 0] - expected_red).max() <= 1
    assert np.abs(px[0, :, 1] - expected_red[::-1]).max() <= 1
    assert np.abs(px[0, :, 2] - 128).max() <= 1


def test_cmyk_becomes_rgb() -> None:
    px = _ingest(CORPUS["jpeg_cmyk"][0]()).pixels
    _assert_colour(px, (16, 16), RED, JPEG_TOLERANCE)


def test_bilevel_and_grey_become_three_equal_channels() -> None:
    assert (_ingest(CORPUS["png_bilevel"][0]()).pixels == 255).all()
    px = _ingest(CORPUS["png_grey"][0]()).pixels
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])


def test_lossless_rgb_round_trips_exactly() -> None:
    arr = quadrants(20, 10)
    for fmt, params in (("PNG", {}), ("WEBP", {"lossless": True})):
        assert np.array_equal(_ingest(encode(arr, fmt, **params)).pixels, arr), fmt


@pytest.mark.parametrize("name", ["gif_animated", "webp_animated", "jpeg_mpo"])
def test_only_the_first_frame_is_used(name: str) -> None:
    result = _ingest(CORPUS[name][0]())
    assert (result.width, result.height) == (16, 16)
    _assert_colour(result.pixels, (8, 8), RED, tol=2)
    _assert_colour(result.pixels, (0, 0), RED, tol=2)


# ---- fuzzing ---------------------------------------------------------------------------------
SEEDS = seeds()


# Example counts come from the profile in tests/conftest.py (300 in CI, 2000 for make test-slow).
@settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    keep=st.floats(0.02, 1.0),
)
def test_mutated_files_only_ever_raise_image_errors(
    seed: str, edits: list[tuple[float, int]], keep: float
) -> None:
    data = bytearray(SEEDS[seed])
    for where, value in edits:
        data[int(where * len(data))] = value
    data = data[: max(1, int(len(data) * keep))]
    try:
        result = ingest_bytes(bytes(data), max_bytes=1 << 20, max_pixels=1 << 16)
    except ImageError:
        return
    assert result.pixels.shape == (result.height, result.width, 3)
    assert result.width * result.height <= 1 << 16
