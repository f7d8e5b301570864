"""Safe previews for reviewers: a blurred, greyscale JPEG rendition of a blob, and HMAC-signed,
expiring links to it (and to the original, whose every use is audited by the API).

Links are not single-use: Label Studio's page fetches an image 2-4 times per view, so a link
lives until it expires.  The token names the review item and the content; nothing else.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageFilter, ImageOps

from pipeline.errors import ErrorKind, PipelineError

Kind = Literal["preview", "original"]
PREVIEW_MAX_SIDE = 512


class LinkInvalid(PipelineError):
    """The link is invalid or has expired."""

    code = "link.invalid"
    kind = ErrorKind.FORBIDDEN


class LinkExpired(LinkInvalid):
    """The link has expired; open the task again for a fresh one."""

    code = "link.expired"


class LinkMismatch(LinkInvalid):
    """The link does not match the review item's content (made for another item, or the item
    changed)."""

    code = "link.mismatch"


@dataclass(frozen=True, slots=True)
class LinkClaims:
    kind: Kind
    item_id: int
    sha256: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: str, kind: str, body: str) -> bytes:
    # the kind is mixed into the key: a preview token can never open an original
    return hmac.new(f"{key}:{kind}".encode(), body.encode(), hashlib.sha256).digest()


def sign_link(
    key: str, *, kind: Kind, item_id: int, sha256: str, expires_at: dt.datetime
) -> str:
    body = _b64(json.dumps({"k": kind, "i": item_id, "h": sha256,
                            "e": int(expires_at.timestamp())},
                           separators=(",", ":")).encode())
    return f"{body}.{_b64(_mac(key, kind, body))}"


def verify_link(key: str, token: str, *, kind: Kind, now: dt.datetime) -> LinkClaims:
    try:
        body, sig = token.split(".", 1)
        if not hmac.compare_digest(_mac(key, kind, body), _unb64(sig)):
            raise LinkInvalid()
        raw = json.loads(_unb64(body))
        claims = LinkClaims(kind=raw["k"], item_id=int(raw["i"]), sha256=str(raw["h"]),
                            expires=int(raw["e"]))
    except LinkInvalid:
        raise
    except (ValueError, KeyError, TypeError):
        raise LinkInvalid() from None
    if claims.kind != kind:
        raise LinkInvalid()
    if claims.expires <= now.timestamp():
        raise LinkExpired()
    return claims


def link_credential(token: str) -> str:
    """The credential id of a signed link, for the audit log: a digest, never the token (which
    opens the image until it expires)."""
    return "link:" + hashlib.sha256(token.encode()).hexdigest()[:24]


def render_preview(data: bytes, *, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """Greyscale, downscaled and blurred hard enough that detail is gone but the scene is not;
    re-encoded as a fresh JPEG (no metadata of the original survives)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (max_side, max_side))  # JPEG: decode at reduced size (cheap, and enough)
        img = ImageOps.exif_transpose(im).convert("L")
    img.thumbnail((max_side, max_side))
    radius = max(6.0, max(img.size) / 24)
    img = img.filter(ImageFilter.GaussianBlur(radius))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=70)
    return out.getvalue()
