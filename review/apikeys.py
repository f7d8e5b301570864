"""API keys as the database holds them (a name, a prefix, the sha256 of the key, scopes, a
rate): repository functions for the API's key management and authentication, keyword-only,
plain values out, never a commit.  What a key means (scopes, verification, rate limits) is the
pipeline's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BindParameter, Connection, Table, bindparam, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from review.errors import UnknownReviewer
from review.schema import ApiKey, ApiRateBucket, Reviewer


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
    #: the reviewer the key belongs to (it acts as them, no one else); None: a service key
    reviewer_id: str | None = None


def _record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(id=row.id, name=row.name, prefix=row.prefix, scopes=tuple(row.scopes),
                        rate_per_minute=row.rate_per_minute, created_at=row.created_at,
                        revoked_at=row.revoked_at, reviewer_id=row.reviewer_id)


def reviewer_is_active(s: Session, reviewer_id: str) -> bool:
    """Whether `reviewer_id` is registered and active (a bound key's or a token's reviewer)."""
    row = s.get(Reviewer, reviewer_id)
    return row is not None and bool(row.active)


def add_api_key(s: Session, *, name: str, prefix: str, secret_sha256: str,
                scopes: Sequence[str], rate_per_minute: int | None,
                now: dt.datetime, reviewer_id: str | None = None) -> ApiKeyRecord:
    """Store a key; with `reviewer_id`, bound to that (registered, active) reviewer."""
    if reviewer_id is not None and not reviewer_is_active(s, reviewer_id):
        raise UnknownReviewer(f"reviewer {reviewer_id!r} is not registered or not active")
    row = ApiKey(name=name, prefix=prefix, secret_sha256=secret_sha256, scopes=list(scopes),
                 rate_per_minute=rate_per_minute, created_at=now, revoked_at=None,
                 reviewer_id=reviewer_id)
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


# ---- rate buckets shared by every API process (named: `key:<id>`, `oidc:<reviewer>`) -------
_BUCKET = cast(Table, ApiRateBucket.__table__)
_NOW: BindParameter[float] = bindparam("t_now")
# a clock behind the last taker's refills nothing and moves nothing back
_ELAPSED = case((_BUCKET.c.at < _NOW, _NOW - _BUCKET.c.at), else_=0.0)
_REFILLED = _BUCKET.c.tokens + bindparam("per_second") * _ELAPSED
_LEVEL = case((bindparam("capacity") < _REFILLED, bindparam("capacity")), else_=_REFILLED)
#: one statement takes a token if there is one (the row lock orders concurrent takers)
_TAKE = (
    update(_BUCKET)
    .where(_BUCKET.c.bucket == bindparam("k"), _LEVEL >= 1.0)
    .values(tokens=_LEVEL - 1.0, at=case((_BUCKET.c.at < _NOW, _NOW), else_=_BUCKET.c.at))
    .returning(_BUCKET.c.bucket)
)
_READ = select(_LEVEL).where(_BUCKET.c.bucket == bindparam("k"))


def take_rate_token(conn: Connection | Session, *, bucket: str, per_second: float,
                    capacity: float, now: float) -> float:
    """Take one token from the bucket named `bucket` (refilled at `per_second` up to
    `capacity`; `now` in seconds since the epoch): 0.0 if taken, else the seconds until one
    will be."""
    params: dict[str, Any] = {"k": bucket, "per_second": per_second, "capacity": capacity,
                              "t_now": now}
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    first = (insert(_BUCKET).values(bucket=bucket, tokens=capacity - 1.0, at=now)
             .on_conflict_do_nothing(index_elements=["bucket"]).returning(_BUCKET.c.bucket))
    for _ in range(2):  # a second try: another process may have made the bucket meanwhile
        if conn.execute(_TAKE, params).first() is not None:
            return 0.0
        if conn.execute(first).first() is not None:  # the bucket's first request
            return 0.0
    level = float(conn.execute(_READ, params).scalar_one())
    return max(1e-3, (1.0 - level) / per_second)
