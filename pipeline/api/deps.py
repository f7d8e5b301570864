"""Dependencies of the routes, as `Annotated` aliases: the app's state, a database session (the
route owns the transaction), the authenticated key with its scope, and the principal acting.

Authentication, the rate limit and the scope check happen here once, not in each handler.  The
review routes take a `Principal` (pipeline.auth): an API key (bound to a reviewer, or a
delegate's) or, when OIDC is configured, a reviewer's bearer token; `acting` derives the
reviewer from it, refusing an X-Reviewer the credential may not name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from pipeline.api.errors import RequestInvalid
from pipeline.api.schemas import ReviewerId
from pipeline.apikeys import (
    ApiKeyInfo,
    AuthInvalid,
    AuthMissing,
    DelegateKeyRefused,
    Forbidden,
    KeyVerifier,
    RateLimited,
    RateLimiter,
    Scope,
    SharedRateLimiter,
    find_key,
    key_bucket,
    token_bucket,
)
from pipeline.auth.oidc import OidcVerifier, looks_like_jwt
from pipeline.auth.principal import Principal
from pipeline.batching import ClassifyService
from pipeline.metrics import ApiMetrics
from pipeline.runtime import Runtime
from pipeline.settings import Settings
from review import reviewer_is_active


@dataclass
class ApiState:
    settings: Settings
    rt: Runtime
    metrics: ApiMetrics
    classifier: ClassifyService
    verifier: KeyVerifier
    limiter: RateLimiter | SharedRateLimiter
    #: whether the app built the runtime (and so closes it)
    owns_runtime: bool
    #: reviewers' bearer tokens, when an OIDC issuer is configured
    oidc: OidcVerifier | None = None

    def now(self) -> dt.datetime:
        return self.rt.review.clock()


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.lookfirst
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    # Commits when the handler returns (before the response is sent: scope="function"), rolls
    # back when it raises; repositories below never commit.
    with state.rt.db.transaction() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Declared for the OpenAPI schema (the "Authorize" button of /docs); parsed below.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer lf_…`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: lf_…`")


def _presented(request: Request) -> str:
    """The credential the request carries: X-API-Key, or the Authorization bearer value."""
    raw = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization")
    if raw is None and authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthInvalid("The Authorization header must be `Bearer <key>`.")
        raw = credentials.strip()
    if not raw:
        raise AuthMissing()
    return raw


async def current_key(
    request: Request,
    state: StateDep,
    _b: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _h: Annotated[str | None, Depends(_header)],
) -> ApiKeyInfo:
    return await _key_for(request, state, _presented(request))


async def _key_for(request: Request, state: ApiState, raw: str) -> ApiKeyInfo:
    info = state.verifier.cached(raw)
    if info is None:
        info = await run_in_threadpool(_lookup, state, raw)
        if info is None:
            raise AuthInvalid()
        state.verifier.remember(raw, info)
    request.state.key_prefix = info.prefix  # for the access log: the prefix, never the key
    await _rate_limit(state, key_bucket(info.id), info.rate_per_minute)
    return info


async def _rate_limit(state: ApiState, bucket: str, per_minute: int | None = None) -> None:
    """Take a token from `bucket` (at `per_minute`, else the default rate), or 429."""
    try:
        if state.limiter.blocking:
            await run_in_threadpool(state.limiter.check, bucket, per_minute)
        else:
            state.limiter.check(bucket, per_minute)
    except RateLimited:
        state.metrics.shed.labels(reason="rate_limited").inc()
        raise


def _lookup(state: ApiState, raw: str) -> ApiKeyInfo | None:
    with state.rt.db.transaction() as s:
        return find_key(s, raw)


async def current_principal(
    request: Request,
    state: StateDep,
    _b: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _h: Annotated[str | None, Depends(_header)],
) -> Principal:
    """Who is calling: a bearer JWT when OIDC is configured (verified against the issuer's
    JWKS; its reviewer must be registered and active), else an API key.  Either takes a token
    from its rate bucket: the key's, or the reviewer's (all of a reviewer's tokens share one,
    at the default rate).  A token is limited once verified, so only registered reviewers
    get buckets; refused tokens are not counted (see SECURITY.md, Known gaps)."""
    raw = _presented(request)
    if state.oidc is not None and looks_like_jwt(raw):
        who = await run_in_threadpool(_token_principal, state, state.oidc, raw)
        assert who.reviewer is not None  # a token always names its reviewer
        await _rate_limit(state, token_bucket(who.reviewer))
        return who
    who = (await _key_for(request, state, raw)).principal()
    if who.allows(Scope.DELEGATE.value) and not state.settings.delegate_keys_allowed:
        # made before production mode, or written into the database by hand
        raise DelegateKeyRefused("Production does not accept delegate keys unless "
                                 "LOOKFIRST_ALLOW_DELEGATE_KEYS is set.")
    return who


def _token_principal(state: ApiState, oidc: OidcVerifier, raw: str) -> Principal:
    def known(reviewer_id: str) -> bool:
        with state.rt.db.transaction() as s:
            return reviewer_is_active(s, reviewer_id)

    return oidc.authenticate(raw, reviewer_known=known)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


CurrentKey = Annotated[ApiKeyInfo, Depends(current_key)]


def require(*scopes: Scope) -> Callable[[ApiKeyInfo], Coroutine[Any, Any, ApiKeyInfo]]:
    """A dependency that lets a key through if it has any of `scopes` (admin has them all)."""
    names = " or ".join(s.value for s in scopes)

    async def dependency(key: CurrentKey) -> ApiKeyInfo:
        if not any(key.allows(s) for s in scopes):
            raise Forbidden(f"This endpoint needs an API key with the {names} scope.")
        return key

    dependency.__name__ = f"require_{'_or_'.join(s.value for s in scopes)}"
    return dependency


def require_principal(*scopes: Scope) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """`require` for the routes that take a principal (a key or a reviewer's token)."""
    names = " or ".join(s.value for s in scopes)

    async def dependency(who: CurrentPrincipal) -> Principal:
        if not any(who.allows(s.value) for s in scopes):
            raise Forbidden(f"This endpoint needs a credential with the {names} scope.")
        return who

    dependency.__name__ = f"require_principal_{'_or_'.join(s.value for s in scopes)}"
    return dependency


ClassifyKey = Annotated[ApiKeyInfo, Depends(require(Scope.CLASSIFY))]
ReviewKey = Annotated[ApiKeyInfo, Depends(require(Scope.REVIEW))]
AppealKey = Annotated[ApiKeyInfo, Depends(require(Scope.APPEAL))]
AdminKey = Annotated[ApiKeyInfo, Depends(require(Scope.ADMIN))]
#: a reviewer's own key or token, or a delegate's key (see `acting`)
ReviewPrincipal = Annotated[Principal, Depends(require_principal(Scope.REVIEW))]
#: a decision's statement of reasons: the platform, its appeal front end and reviewers read it
DecisionReader = Annotated[
    Principal, Depends(require_principal(Scope.CLASSIFY, Scope.APPEAL, Scope.REVIEW))
]

XReviewer = Annotated[
    ReviewerId | None,
    Header(alias="X-Reviewer",
           description="The reviewer a delegate credential acts for (a reviewer's own key or "
                       "token may only name its own reviewer).",
           examples=["dana"]),
]


def acting(who: Principal, header: str | None, body: str | None = None) -> Principal:
    """The principal acting, with its reviewer: a bound key's or a token's own (naming anyone
    else is 403 `auth.reviewer_bound`), or the reviewer a delegate names in X-Reviewer or the
    body's `reviewer` (they must agree; an unbound key without the delegate scope is 403
    `auth.delegate_required`)."""
    if header and body and header != body:
        raise RequestInvalid("X-Reviewer and the body's reviewer name different people.")
    return who.acting(header or body)


def reviewer_of(who: Principal) -> str:
    """The reviewer of a principal `acting` returned (it always has one)."""
    assert who.reviewer is not None
    return who.reviewer
