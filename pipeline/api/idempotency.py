"""Idempotency-Key storage: the response to a request, replayed when the same key comes back.

Keys are per API key (two platforms may both use "upload-1").  A key reused with a different
request is refused (`idempotency.mismatch`).  Repository functions, keyword-only; they never
commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from pipeline.api.errors import IdempotencyMismatch
from review import delete_stored_response, find_stored_response, save_stored_response


@dataclass(frozen=True, slots=True)
class Stored:
    status_code: int
    response: dict[str, Any]


def fingerprint(**parts: Any) -> str:
    """sha256 of the request's meaning: the same upload, context and content in any encoding
    (multipart or raw body) is the same request."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find(
    s: Session, *, api_key_id: int, key: str, fingerprint: str, now: dt.datetime,
    ttl: dt.timedelta,
) -> Stored | None:
    """The stored response for (api key, key), or None; IdempotencyMismatch if the key was
    used with another request.  An expired record is removed and the key is free again."""
    row = find_stored_response(s, api_key_id=api_key_id, key=key)
    if row is None:
        return None
    if row.created_at + ttl < now:
        delete_stored_response(s, record_id=row.id)
        return None
    if row.fingerprint != fingerprint:
        raise IdempotencyMismatch()
    return Stored(row.status_code, dict(row.response))


def save(
    s: Session, *, api_key_id: int, key: str, fingerprint: str, status_code: int,
    response: dict[str, Any], now: dt.datetime,
) -> None:
    save_stored_response(s, api_key_id=api_key_id, key=key, fingerprint=fingerprint,
                         status_code=status_code, response=response, now=now)
