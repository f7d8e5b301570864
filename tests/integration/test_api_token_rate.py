"""Reviewers' OpenID Connect bearer tokens are rate limited as API keys are: one bucket per
reviewer (whichever token or identity-provider account a request comes through), at the
default rate, in memory or in the database (the store `serve --workers N` uses).

Through the real app: a real uvicorn process configured for a local issuer
(tests/oidc_issuer.py), once with each store; and the database store's buckets on PostgreSQL,
shared by two limiters as by two worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pipeline.apikeys import RateLimited, SharedRateLimiter, key_bucket, token_bucket
from review.db import Database
from tests.integration.api_conftest_helpers import ApiServer, running
from tests.oidc_issuer import AUDIENCE, LocalIssuer

# 6 a minute with 30 s of burst: a bucket holds 3 requests and refills one in 10 s, so the
# test's few requests never see a refill (a slow machine has 7 s of slack)
RATE_PER_MINUTE = 6
BUDGET = 3


@pytest.fixture(scope="module", params=["memory", "database"])
def api(request: pytest.FixtureRequest, idp: LocalIssuer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    env = {
        "LOOKFIRST_API_RATE_PER_MINUTE": str(RATE_PER_MINUTE),
        "LOOKFIRST_API_RATE_BURST_SECONDS": "30",
        "LOOKFIRST_API_RATE_LIMIT_STORE": request.param,
        "LOOKFIRST_API_KEY_CACHE_S": "0",
        "LOOKFIRST_OIDC_ISSUER": idp.url, "LOOKFIRST_OIDC_AUDIENCE": AUDIENCE,
        "LOOKFIRST_OIDC_JWKS_URL": idp.jwks_url,
        "LOOKFIRST_OIDC_REVIEWER_CLAIM": "preferred_username",
    }
    yield from running(tmp_path_factory.mktemp(f"token-rate-{request.param}"), scorer="pixel",
                       env=env)


def token(idp: LocalIssuer, reviewer: str, **overrides: str) -> dict[str, str]:
    """A fresh token (its own `jti`) for `reviewer`; `overrides` replace claims."""
    claims = idp.claims(reviewer)
    claims.update(overrides)
    raw = idp.token(idp.keys["rsa-1"], claims)
    return {"Authorization": f"Bearer {raw}"}


def read(api: ApiServer, headers: dict[str, str]) -> httpx.Response:
    """A request any review credential may make (and that touches nothing): 404."""
    return httpx.get(f"{api.url}/v1/decisions/no-such-decision", headers=headers, timeout=30)


def limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "rate_limited", r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60 // RATE_PER_MINUTE


def test_a_reviewers_tokens_share_one_budget_and_get_429_past_it(
    api: ApiServer, idp: LocalIssuer
) -> None:
    api.add_reviewer("tess", ["adult"])
    for _ in range(BUDGET):
        r = read(api, token(idp, "tess"))  # a fresh token each time: still tess's budget
        assert r.status_code == 404 and r.json()["code"] == "review.not_found", r.text
    limited(read(api, token(idp, "tess")))
    # another identity-provider account whose token names tess: still tess's bucket
    limited(read(api, token(idp, "tess", sub="user-tess-second-account")))
    # tess's own API key has its own bucket
    own_key = {"X-API-Key": api.key("review", name="tess-key", reviewer="tess")}
    assert read(api, own_key).status_code == 404


def test_two_reviewers_tokens_have_separate_buckets(api: ApiServer, idp: LocalIssuer) -> None:
    for r in ("uma", "vic"):
        api.add_reviewer(r, ["adult"])
    for _ in range(BUDGET):
        assert read(api, token(idp, "uma")).status_code == 404
    limited(read(api, token(idp, "uma")))
    for _ in range(BUDGET):
        assert read(api, token(idp, "vic")).status_code == 404
    limited(read(api, token(idp, "vic")))


def test_refused_tokens_take_nothing_from_the_reviewers_budget(
    api: ApiServer, idp: LocalIssuer
) -> None:
    """Limited after verification: a forged or expired token naming a reviewer is 401, and
    the reviewer's budget is untouched."""
    api.add_reviewer("wes", ["adult"])
    for _ in range(BUDGET + 2):
        r = read(api, token(idp, "wes", aud="another-service"))
        assert r.status_code == 401 and r.json()["code"] == "auth.token_audience", r.text
    for _ in range(BUDGET):
        assert read(api, token(idp, "wes")).status_code == 404
    limited(read(api, token(idp, "wes")))


# ---- the database store on PostgreSQL: one budget across processes ------------------------------
@pytest.mark.postgres
def test_a_tokens_budget_holds_across_two_shared_limiters_on_postgres(pg_url: str) -> None:
    """Two limiters on one PostgreSQL database (as two `serve --workers 2` processes): a
    reviewer's token bucket is one budget across both, apart from the other reviewers' and
    from the keys'; and it refills with time."""
    now = [1_000_000.0]
    dbs = [Database(pg_url) for _ in range(2)]
    try:
        a, b = (SharedRateLimiter(d, default_per_minute=RATE_PER_MINUTE, burst_s=30,
                                  clock=lambda: now[0]) for d in dbs)
        for limiter in (a, b, a):
            limiter.check(token_bucket("r1"))
        for limiter in (a, b):
            with pytest.raises(RateLimited) as exc:
                limiter.check(token_bucket("r1"))
            assert exc.value.retry_after == 10
        for limiter in (b, a, b):  # r2's tokens and a key: buckets of their own
            limiter.check(token_bucket("r2"))
        b.check(key_bucket(1))
        now[0] += 10.0  # one token back, for one request through either process
        a.check(token_bucket("r1"))
        with pytest.raises(RateLimited):
            b.check(token_bucket("r1"))
    finally:
        for d in dbs:
            d.dispose()
