"""Hostile uploads against the live API with the real model: every file of the corpus
(tests/hostile.py, extended here) gets the specific 4xx code ingest owes it, or is accepted and
decided; never a 5xx; and the server process never holds more than 1 GB (VmHWM).

Each file goes in both ways an upload can arrive: multipart and raw body.  The names and
content types the client claims are deliberately wrong: only the bytes count.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Final
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from tests.hostile import (
    ACCEPT,
    CORPUS,
    LIMITS,
    Factory,
    encode,
    gradient,
    png_chunk,
    png_from_rows,
)
from tests.integration.api_conftest_helpers import ApiServer, raw_request, running

pytestmark = [pytest.mark.model,
              pytest.mark.api_server(scorer="nudenet", client_scopes=("classify",))]

PEAK_RSS_LIMIT_KB: Final = 1024 * 1024
STATUS: Final = {
    "image.empty": 422,
    "image.too_large": 413,
    "image.unsupported_type": 415,
    "image.corrupt": 422,
    "image.too_many_pixels": 422,
}


# ---- more hostile files, beyond the shared corpus -----------------------------------------------
@cache
def _zlib_bomb() -> bytes:
    return zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MB of zeros in ~64 KB


def _png_with(chunk: bytes) -> bytes:
    base = encode(gradient(16, 16), "PNG")
    return base[:33] + chunk + base[33:]  # right after IHDR


def _png_at_pixel_cap() -> bytes:
    # 7000 x 7000 = 49 M pixels, just under the 50 M cap: the largest picture we must decode
    side = 7000
    return png_from_rows(side, side, bit_depth=8, colour_type=0, rows=bytes(side * (side + 1)))


def _jpeg_exif_ifd_loop() -> bytes:
    base = encode(gradient(), "JPEG")
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 2)
            + struct.pack(">HHII", 0x8769, 4, 1, 8)  # Exif IFD pointer back to this IFD
            + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00\x00\x00\x08")
    app1 = b"Exif\x00\x00" + tiff
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + base[2:]


def _jpeg_many_comments() -> bytes:
    base = encode(gradient(), "JPEG")
    com = b"".join(b"\xff\xfe\xff\xff" + bytes(65533) for _ in range(64))  # 4 MB of headers
    return base[:2] + com + base[2:]


def _gif_many_frames() -> bytes:
    frames = [Image.fromarray(np.full((64, 64, 3), (i * 7) % 256, np.uint8)).convert("P")
              for i in range(200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


EXTRA: Final[dict[str, tuple[Factory, str]]] = {
    "png_ztxt_bomb": (lambda: _png_with(png_chunk(b"zTXt", b"Comment\x00\x00" + _zlib_bomb())),
                      "image.corrupt"),
    "png_iccp_bomb": (lambda: _png_with(png_chunk(b"iCCP", b"icc\x00\x00" + _zlib_bomb())),
                      "image.corrupt"),
    "png_itxt_bomb": (lambda: _png_with(png_chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00"
                                                  + _zlib_bomb())), "image.corrupt"),
    "png_at_pixel_cap": (_png_at_pixel_cap, ACCEPT),
    "jpeg_exif_ifd_loop": (_jpeg_exif_ifd_loop, ACCEPT),
    "jpeg_many_comments": (_jpeg_many_comments, ACCEPT),
    "gif_200_frames": (_gif_many_frames, ACCEPT),
    "gifar": (lambda: encode(gradient(), "GIF") + b"PK\x03\x04" + bytes(64), ACCEPT),
    "zeros_1mb": (lambda: bytes(1 << 20), "image.unsupported_type"),
    "jpeg_magic_then_pdf": (lambda: b"\xff\xd8\xff\xe0" + b"%PDF-1.4 junk" * 10, "image.corrupt"),
}

ALL: Final = {**CORPUS, **EXTRA}
assert len(ALL) >= 40
assert LIMITS["max_bytes"] == 20 * 1024 * 1024  # the server runs with the default limits


def _check(r: httpx.Response, expected: str, name: str) -> None:
    assert r.status_code < 500, (name, r.status_code, r.text)
    if expected == ACCEPT:
        assert r.status_code == 200, (name, r.text)
        assert r.json()["outcome"] in ("allow", "hold", "review"), name
    else:
        assert (r.status_code, r.json()) == (STATUS[expected], {"code": expected,
                                                                "detail": r.json()["detail"]}), name


@pytest.mark.parametrize("name", sorted(ALL))
def test_hostile_file_multipart(name: str, client: httpx.Client) -> None:
    factory, expected = ALL[name]
    data = factory()
    # a lying name and content type: a "harmless" PNG name for everything
    r = client.post("/v1/classify", files={"file": ("holiday.png", data, "image/png")},
                    data={"account_id": "acct-hostile", "upload_id": f"mp-{name}-{uuid.uuid4()}"})
    _check(r, expected, name)


def _recorded(api: ApiServer, upload_id: str, data: bytes) -> list[str]:
    """What the server kept of an upload: its upload row, content row, stored blob."""
    sha256 = hashlib.sha256(data).hexdigest()
    engine = create_engine(api.db_url)
    try:
        with engine.connect() as conn:
            uploads = conn.execute(text("SELECT count(*) FROM upload WHERE external_id = :u"),
                                   {"u": upload_id}).scalar_one()
            contents = conn.execute(text("SELECT count(*) FROM content WHERE sha256 = :s"),
                                    {"s": sha256}).scalar_one()
    finally:
        engine.dispose()
    return (["upload"] * uploads + ["content"] * contents
            + [str(p) for p in api.data_dir.rglob(f"{sha256}*")])


@pytest.mark.parametrize("name", sorted(ALL))
def test_hostile_file_raw_body(name: str, api: ApiServer, client: httpx.Client) -> None:
    factory, expected = ALL[name]
    data = factory()
    params = {"account_id": "acct-hostile", "upload_id": f"raw-{name}-{uuid.uuid4()}"}
    if expected == "image.too_large":
        # Refused from its Content-Length, before the body is read: the answer can come while
        # the body is still being written, which raw_request expects and httpx does not.
        assert len(data) > LIMITS["max_bytes"]
        head = (f"POST /v1/classify?{urlencode(params)} HTTP/1.1\r\nHost: x\r\n"
                f"X-API-Key: {api.key('classify')}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(data)}\r\n\r\n")
        chunks = (data[i:i + 65536] for i in range(0, len(data), 65536))
        status, body, _ = raw_request(api, head, chunks)
        assert (status, sorted(body), body["code"]) == (413, ["code", "detail"], expected), name
        assert _recorded(api, params["upload_id"], data) == [], name
        return
    r = client.post("/v1/classify", content=data, params=params,
                    headers={"content-type": "image/jpeg"})
    _check(r, expected, name)


def test_huge_declared_and_endless_streamed_bodies(api: ApiServer) -> None:
    key = api.key("classify")
    target = f"/v1/classify?account_id=acct-hostile&upload_id={uuid.uuid4()}"
    for declared in (LIMITS["max_bytes"] + 1, 2**31, 2**63):
        head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                f"Content-Type: image/jpeg\r\nContent-Length: {declared}\r\n\r\n")
        status, body, sent = raw_request(api, head, iter([b"\xff\xd8\xff" + bytes(65533)] * 16))
        assert (status, body["code"]) == (413, "image.too_large"), declared
    # a multipart file part that never ends, with no declared size
    def chunked(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff")
    mb = chunked(b"\xee" * (1 << 20))
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, body, sent = raw_request(api, head, iter([chunked(part)] + [mb] * 500))
    assert (status, body["code"]) == (413, "image.too_large")
    assert sent < 100 * (1 << 20)


def test_concurrent_large_uploads_stay_within_the_memory_budget(
    api: ApiServer, client: httpx.Client
) -> None:
    """Decoded pixels are budgeted (LOOKFIRST_API_DECODED_BUDGET_MB): a burst of the largest
    pictures the pixel cap allows, and of 12 MP photos, is decoded a few at a time."""
    giant = _png_at_pixel_cap()
    photo = encode(np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), np.uint8), "JPEG",
                   quality=85)

    def send(data: bytes) -> int:
        r = client.post("/v1/classify", content=data, headers={"content-type": "image/png"},
                        params={"account_id": "acct-hostile", "upload_id": str(uuid.uuid4())})
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, [giant] * 4 + [photo] * 12))
    assert statuses == [200] * 16
    assert api.peak_rss_kb() < PEAK_RSS_LIMIT_KB


def test_server_survived_with_bounded_memory(api: ApiServer, client: httpx.Client) -> None:
    """Runs after the corpus (file order): the same process, still serving, peak RSS < 1 GB."""
    assert api.proc.poll() is None
    assert httpx.get(f"{api.url}/health/ready").status_code == 200
    peak = api.peak_rss_kb()
    print(f"\nserver peak RSS (VmHWM) after {len(ALL)} hostile files x 2: {peak / 1024:.0f} MB")
    assert peak < PEAK_RSS_LIMIT_KB, f"peak RSS {peak / 1024:.0f} MB"
    text = httpx.get(f"{api.url}/metrics").text
    # (/health/ready answered 503 while the model loaded at start: that is its job)
    server_errors = [line for line in text.splitlines()
                     if line.startswith("lookfirst_http_request_duration_seconds_count")
                     and 'route="/v1/' in line and 'status="5' in line]
    assert server_errors == []
    assert "Traceback" not in api.log()


# ---- extreme aspect ratios ----------------------------------------------------------------
@pytest.fixture(scope="module")
def api_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from running(tmp_path_factory.mktemp("aspect"), scorer="nudenet")


def test_extreme_aspect_ratio_stays_within_memory(api_alone: ApiServer) -> None:
    """A 1 x 20000 strip (a few hundred bytes) once made the letterbox pad a 20000^2 square."""
    data = png_from_rows(20000, 1, bit_depth=8, colour_type=0, rows=bytes(20001))
    with api_alone.client(api_alone.key("classify")) as c:
        r = c.post("/v1/classify", content=data, headers={"content-type": "image/png"},
                   params={"account_id": "acct-hostile", "upload_id": str(uuid.uuid4())})
    assert r.status_code < 500
    assert api_alone.peak_rss_kb() < PEAK_RSS_LIMIT_KB
