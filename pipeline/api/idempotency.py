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

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from pipeline.api.errors import IdempotencyMismatch
from review.schema import IdempotencyRecord


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
    row = s.execute(
        select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    if row.created_at + ttl < now:
        s.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == row.id))
        return None
    if row.fingerprint != fingerprint:
        raise IdempotencyMismatch()
    return Stored(row.status_code, dict(row.response))


def save(
    s: Session, *, api_key_id: int, key: str, fingerprint: str, status_code: int,
    response: dict[str, Any], now: dt.datetime,
) -> None:
    s.add(
        IdempotencyRecord(
            api_key_id=api_key_id, key=key, fingerprint=fingerprint, status_code=status_code,
            response=response, created_at=now,
        )
    )
    s.flush()
