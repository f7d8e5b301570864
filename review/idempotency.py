"""Stored responses for idempotency keys (per API key): repository functions, keyword-only,
plain values out, never a commit.  What makes two requests the same is the API's business."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from review.schema import IdempotencyRecord


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: int
    fingerprint: str
    status_code: int
    response: dict[str, Any]
    created_at: dt.datetime


def find_stored_response(s: Session, *, api_key_id: int, key: str) -> StoredResponse | None:
    row = s.execute(
        select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return StoredResponse(id=row.id, fingerprint=row.fingerprint, status_code=row.status_code,
                          response=dict(row.response), created_at=row.created_at)


def delete_stored_response(s: Session, *, record_id: int) -> None:
    s.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))


def save_stored_response(s: Session, *, api_key_id: int, key: str, fingerprint: str,
                         status_code: int, response: dict[str, Any], now: dt.datetime) -> None:
    s.add(IdempotencyRecord(api_key_id=api_key_id, key=key, fingerprint=fingerprint,
                            status_code=status_code, response=response, created_at=now))
    s.flush()
