"""API keys: creation, hashed storage, scopes, verification (cached), and the rate limits of
keys and of reviewers' bearer tokens.

A key is `lf_<prefix>_<secret>`: 8 characters that identify it (shown in listings and logs)
and 256 bits of randomness.  Only the sha256 of the whole key is stored, so a database copy
does not let anyone call the API; the key itself is printed once, when it is created.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sqlalchemy.orm import Session

from pipeline.errors import ErrorKind, PipelineError
from review import (
    SYSTEM,
    ApiKeyRecord,
    Database,
    add_api_key,
    append_audit_event,
    find_api_key,
    list_api_keys,
    revoke_api_key,
    take_rate_token,
)

if TYPE_CHECKING:
    from pipeline.auth.principal import Principal

__all__ = [
    "ApiKeyInfo",
    "AuthError",
    "AuthInvalid",
    "AuthMissing",
    "DelegateKeyRefused",
    "Forbidden",
    "KeyVerifier",
    "RateLimited",
    "RateLimiter",
    "Scope",
    "SharedRateLimiter",
    "create_key",
    "find_key",
    "hash_key",
    "key_bucket",
    "list_keys",
    "parse_scopes",
    "revoke_key",
    "token_bucket",
]


class Scope(enum.StrEnum):
    CLASSIFY = "classify"  # the platform's upload service: classify, read decisions
    REVIEW = "review"  # reviewer tools and UI: the queue, claims, verdicts
    APPEAL = "appeal"  # the platform's appeal and notice front end: the user's voice
    ADMIN = "admin"  # everything above, and key management
    #: act for any reviewer the request names (a console behind the platform's own login);
    #: never implied by admin, never on a key bound to a reviewer, refused in production
    #: unless `allow_delegate_keys`
    DELEGATE = "delegate"


_SCOPE_VALUES: Final = frozenset(s.value for s in Scope)
KEY_PATTERN: Final = re.compile(r"lf_([a-z2-7]{8})_([A-Za-z0-9_-]{43})")


# ---- errors (each a 4xx with a stable code) -----------------------------------------------------
class AuthError(PipelineError):
    """The request is not authenticated."""

    code = "auth.error"
    kind = ErrorKind.UNAUTHENTICATED


class AuthMissing(AuthError):
    """An API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

    code = "auth.missing"


class AuthInvalid(AuthError):
    """The API key is not valid (malformed, unknown or revoked)."""

    code = "auth.invalid"


class Forbidden(AuthError):
    """The API key does not have the scope this endpoint needs."""

    code = "auth.forbidden"
    kind = ErrorKind.FORBIDDEN


class DelegateKeyRefused(PipelineError):
    """A delegate key acts for any reviewer it names: production refuses to make one unless
    LOOKFIRST_ALLOW_DELEGATE_KEYS is set, and a key bound to a reviewer cannot be one."""

    code = "keys.delegate_refused"
    kind = ErrorKind.FORBIDDEN


class RateLimited(PipelineError):
    """Too many requests for this credential; retry after the number of seconds in Retry-After."""

    code = "rate_limited"
    kind = ErrorKind.LIMITED

    def __init__(self, retry_after_s: float, detail: str | None = None) -> None:
        self.retry_after = max(1, math.ceil(retry_after_s))
        super().__init__(detail)


# ---- keys ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What the server knows of a key; never the key or its hash."""

    id: int
    name: str
    prefix: str
    scopes: frozenset[Scope]
    rate_per_minute: int | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    #: the reviewer the key belongs to; None: a service (or delegate) key
    reviewer_id: str | None = None

    def allows(self, scope: Scope) -> bool:
        """Admin implies every scope but delegate (acting for people is never a side effect)."""
        if scope == Scope.DELEGATE:
            return Scope.DELEGATE in self.scopes
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def principal(self) -> Principal:
        """The key as an authenticated caller (pipeline.auth.principal)."""
        # here, not at the top: pipeline.auth's errors extend this module's
        from pipeline.auth.principal import Principal

        return Principal.api_key(key_id=self.id, prefix=self.prefix, name=self.name,
                                 scopes=[str(s) for s in self.scopes], reviewer=self.reviewer_id)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": sorted(self.scopes),
            "rate_per_minute": self.rate_per_minute,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "reviewer": self.reviewer_id,
        }


def _info(row: ApiKeyRecord) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=frozenset(Scope(s) for s in row.scopes if s in _SCOPE_VALUES),
        rate_per_minute=row.rate_per_minute,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        reviewer_id=row.reviewer_id,
    )


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    out = set()
    for v in values:
        try:
            out.add(Scope(v.strip().lower()))
        except ValueError:
            raise PipelineError(
                f"unknown scope {v!r} (known: {', '.join(s.value for s in Scope)})"
            ) from None
    if not out:
        raise PipelineError("a key needs at least one scope")
    return frozenset(out)


def create_key(
    s: Session,
    *,
    name: str,
    scopes: Iterable[str],
    rate_per_minute: int | None = None,
    now: dt.datetime,
    reviewer: str | None = None,
    allow_delegate: bool = False,
    by: Principal | None = None,
) -> tuple[ApiKeyInfo, str]:
    """Store a new key; returns its description and the key itself (shown once, never stored).

    `reviewer`: the key belongs to that reviewer and acts as them only.  The `delegate` scope
    needs `allow_delegate` (the caller's: development, or production with
    LOOKFIRST_ALLOW_DELEGATE_KEYS) and no `reviewer`.  Audited (`api_key.created`), naming
    `by`, the principal that made it (the CLI's operator, the API's admin key)."""
    chosen = parse_scopes(scopes)
    if Scope.DELEGATE in chosen and reviewer is not None:
        raise DelegateKeyRefused("a key bound to a reviewer acts as them only: it cannot have "
                                 "the delegate scope")
    if Scope.DELEGATE in chosen and not allow_delegate:
        raise DelegateKeyRefused()
    from pipeline.auth.principal import REVIEWER_ID

    if reviewer is not None and not REVIEWER_ID.fullmatch(reviewer):
        raise PipelineError("not a reviewer id")
    name = name.strip()
    if not name or len(name) > 100:
        raise PipelineError("a key's name must be 1 to 100 characters")
    if rate_per_minute is not None and rate_per_minute <= 0:
        raise PipelineError("rate_per_minute must be positive")
    prefix = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()
    raw = f"lf_{prefix}_{secrets.token_urlsafe(32)}"
    assert KEY_PATTERN.fullmatch(raw)
    row = add_api_key(s, name=name, prefix=prefix, secret_sha256=hash_key(raw),
                      scopes=sorted(chosen), rate_per_minute=rate_per_minute, now=now,
                      reviewer_id=reviewer)
    info = _info(row)
    _audit(s, by, "api_key.created", info, now)
    return info, raw


def _audit(s: Session, by: Principal | None, event: str, info: ApiKeyInfo,
           now: dt.datetime) -> None:
    append_audit_event(
        s, at=now, actor=by.actor if by is not None else SYSTEM, event=event,
        subject_type="api_key", subject_id=info.id,
        data={"name": info.name, "prefix": info.prefix, "scopes": sorted(info.scopes),
              "reviewer": info.reviewer_id,
              "principal": by.audit_data() if by is not None else None})


def list_keys(s: Session) -> list[ApiKeyInfo]:
    return [_info(r) for r in list_api_keys(s)]


def revoke_key(s: Session, *, key_id: int, now: dt.datetime,
               by: Principal | None = None) -> ApiKeyInfo:
    """Revoke a key (audited: `api_key.revoked`, naming `by`)."""
    row = revoke_api_key(s, key_id=key_id, now=now)
    if row is None:
        raise PipelineError(f"no API key {key_id}")
    info = _info(row)
    _audit(s, by, "api_key.revoked", info, now)
    return info


def find_key(s: Session, raw: str) -> ApiKeyInfo | None:
    """The live key `raw` names, or None (malformed, unknown or revoked)."""
    if KEY_PATTERN.fullmatch(raw) is None:
        return None
    row = find_api_key(s, secret_sha256=hash_key(raw))
    if row is None or row.revoked_at is not None:
        return None
    return _info(row)


# ---- verification with a short cache ------------------------------------------------------------
class KeyVerifier:
    """Looks keys up by hash, caching live ones for `ttl_s` (a revocation takes effect within
    it).  Unknown keys are not cached: a flood of random keys cannot fill memory."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[ApiKeyInfo, float]] = {}
        self._lock = threading.Lock()

    def cached(self, raw: str) -> ApiKeyInfo | None:
        if self.ttl_s <= 0:
            return None
        digest = hash_key(raw)
        with self._lock:
            hit = self._cache.get(digest)
            if hit is None:
                return None
            if hit[1] < self.clock():
                del self._cache[digest]
                return None
            return hit[0]

    def remember(self, raw: str, info: ApiKeyInfo) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._cache) > 10_000:  # bounded: forget everything rather than grow
                self._cache.clear()
            self._cache[hash_key(raw)] = (info, self.clock() + self.ttl_s)

    def forget_all(self) -> None:
        with self._lock:
            self._cache.clear()


# ---- rate limits -------------------------------------------------------------------------------
def key_bucket(key_id: int) -> str:
    """The rate bucket of an API key (its own rate, `rate_per_minute`, or the default)."""
    return f"key:{key_id}"


def token_bucket(reviewer: str) -> str:
    """The rate bucket of a reviewer's bearer tokens, at the default rate: one per reviewer,
    whichever token or identity-provider account a request comes through (a second token
    is no second budget).  One issuer per server, so the issuer is not part of the name."""
    return f"oidc:{reviewer}"


class RateLimiter:
    """One token bucket per name (`key_bucket`, `token_bucket`): `per_minute` refill (the
    default rate unless the caller gives one), `burst_s` seconds' worth of capacity.

    In memory, per server process: right for one process (SQLite's one server); with N
    processes a key would get up to N times its rate, which `SharedRateLimiter` prevents.
    Buckets are made only for authenticated callers (keys, registered reviewers), so their
    number is bounded."""

    #: whether `check` does I/O (the API then calls it off the event loop)
    blocking = False

    def __init__(
        self,
        *,
        default_per_minute: int,
        burst_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_per_minute = default_per_minute
        self.burst_s = burst_s
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, bucket: str, per_minute: int | None = None) -> None:
        """Take one token from `bucket`, or raise RateLimited with the wait until one is
        there."""
        rate = (per_minute or self.default_per_minute) / 60.0
        capacity = max(1.0, rate * self.burst_s)
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(bucket, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[bucket] = (tokens, now)
                raise RateLimited((1.0 - tokens) / rate)
            self._buckets[bucket] = (tokens - 1.0, now)


class SharedRateLimiter:
    """The same token buckets kept in the database, so that a key's (or a reviewer's tokens')
    rate holds across every process that serves it (`lookfirst serve --workers N`, or
    several hosts).

    One statement per request takes a token (PostgreSQL: an `UPDATE ... RETURNING` in
    autocommit, one round trip; the bucket's row lock orders concurrent requests of one
    bucket, and requests of different buckets never wait on each other).  Measured on the
    2-core development machine: see docs/batch.md."""

    blocking = True

    def __init__(self, db: Database, *, default_per_minute: int, burst_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.default_per_minute = default_per_minute
        self.burst_s = burst_s
        #: wall-clock seconds: the buckets are shared by processes (and hosts), so no
        #: process-local clock will do
        self.clock = clock

    def check(self, bucket: str, per_minute: int | None = None) -> None:
        """Take one token from `bucket`, or raise RateLimited with the wait until one is
        there."""
        rate = (per_minute or self.default_per_minute) / 60.0
        capacity = max(1.0, rate * self.burst_s)
        now = self.clock()
        if self.db.engine.dialect.name == "sqlite":
            with self.db.transaction() as s:
                wait = take_rate_token(s, bucket=bucket, per_second=rate, capacity=capacity,
                                       now=now)
        else:
            with self.db.autocommit() as conn:
                wait = take_rate_token(conn, bucket=bucket, per_second=rate, capacity=capacity,
                                       now=now)
        if wait > 0:
            raise RateLimited(wait)
