"""API keys as the database holds them (a name, a prefix, the sha256 of the key, scopes, a
rate): repository functions for the API's key management and authentication, keyword-only,
plain values out, never a commit.  What a key means (scopes, verification, rate limits) is the
pipeline's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from review.schema import ApiKey


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored key; never its hash."""

    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    rate_per_minute: int | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def _record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(id=row.id, name=row.name, prefix=row.prefix, scopes=tuple(row.scopes),
                        rate_per_minute=row.rate_per_minute, created_at=row.created_at,
                        revoked_at=row.revoked_at)


def add_api_key(s: Session, *, name: str, prefix: str, secret_sha256: str,
                scopes: Sequence[str], rate_per_minute: int | None,
                now: dt.datetime) -> ApiKeyRecord:
    row = ApiKey(name=name, prefix=prefix, secret_sha256=secret_sha256, scopes=list(scopes),
                 rate_per_minute=rate_per_minute, created_at=now, revoked_at=None)
    s.add(row)
    s.flush()
    return _record(row)


def list_api_keys(s: Session) -> list[ApiKeyRecord]:
    return [_record(r) for r in s.execute(select(ApiKey).order_by(ApiKey.id)).scalars()]


def get_api_key(s: Session, *, key_id: int) -> ApiKeyRecord | None:
    row = s.get(ApiKey, key_id)
    return None if row is None else _record(row)


def find_api_key(s: Session, *, secret_sha256: str) -> ApiKeyRecord | None:
    """The key with this hash, revoked or not (None: no such key)."""
    row = s.execute(
        select(ApiKey).where(ApiKey.secret_sha256 == secret_sha256)
    ).scalar_one_or_none()
    return None if row is None else _record(row)


def revoke_api_key(s: Session, *, key_id: int, now: dt.datetime) -> ApiKeyRecord | None:
    """Revoke the key (a revoked key keeps its first revocation time); None: no such key."""
    row = s.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = now
        s.flush()
    return _record(row)
