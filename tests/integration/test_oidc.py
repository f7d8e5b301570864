"""OpenID Connect bearer tokens against a local identity provider (real keys, a real uvicorn on
127.0.0.1 serving the JWKS): what is accepted, and every way a token is refused, each with its
code.  Time claims are checked by PyJWT against the real clock, so tokens are minted relative
to it with margins far larger than any test's run time; the JWKS cache runs on a clock the
tests move by hand, so refresh floors and lifetimes are exercised without sleeping.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.api.errors import HTTP_STATUS
from pipeline.auth.errors import (
    JwksUnavailable,
    TokenAlgorithm,
    TokenAudience,
    TokenClaims,
    TokenExpired,
    TokenInvalid,
    TokenIssuer,
    TokenMalformed,
    TokenNotYetValid,
    TokenSignature,
    TokenUnknownKey,
    UnknownReviewer,
)
from pipeline.auth.oidc import OidcConfig, OidcVerifier, looks_like_jwt
from pipeline.auth.principal import PrincipalKind, token_credential
from review.db import Database
from review.service import ReviewService
from tests.oidc_issuer import AUDIENCE, LocalIssuer, make_key


class Ticker:
    """A monotonic clock the test moves by hand (the JWKS cache's clock)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    idp = LocalIssuer()
    idp.add_key("rsa", kid="rsa-1")
    idp.add_key("ec", kid="ec-1")
    with idp:
        yield idp


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


def _config(issuer: LocalIssuer, **kw: Any) -> OidcConfig:
    base: dict[str, Any] = dict(issuer=issuer.url, audience=AUDIENCE, jwks_url=issuer.jwks_url,
                                reviewer_claim="preferred_username")
    base.update(kw)
    return OidcConfig(**base)


@pytest.fixture
def verifier(issuer: LocalIssuer, ticker: Ticker) -> OidcVerifier:
    return OidcVerifier(_config(issuer), clock=ticker)


def _refused(verifier: OidcVerifier, token: str, expected: type[Exception]) -> str:
    """Verify `token`, require exactly the error `expected`; returns its code."""
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert type(info.value) is expected, (type(info.value), info.value.detail)
    code: str = info.value.code
    return code


# ---- accepted ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
def test_a_valid_token_names_its_reviewer(issuer: LocalIssuer, verifier: OidcVerifier,
                                          kid: str) -> None:
    claims = issuer.claims("alice")
    v = verifier.verify(issuer.token(issuer.keys[kid], claims))
    assert (v.issuer, v.subject, v.reviewer_id) == (issuer.url, "user-alice", "alice")
    assert (v.key_id, v.algorithm, v.token_id) == (kid, issuer.keys[kid].alg, claims["jti"])
    assert v.expires_at == claims["exp"]


def test_an_audience_list_that_includes_this_service_is_accepted(
    issuer: LocalIssuer, verifier: OidcVerifier
) -> None:
    token = issuer.token(issuer.keys["rsa-1"],
                         issuer.claims("alice", aud=["console", AUDIENCE]))
    assert verifier.verify(token).reviewer_id == "alice"


def test_clock_skew_within_the_leeway_is_tolerated(issuer: LocalIssuer,
                                                   verifier: OidcVerifier) -> None:
    now = time.time()
    # expired five seconds ago, issued five seconds "from now": both inside the 30 s leeway
    late = issuer.claims("alice", now=now - 305)
    early = issuer.claims("alice", iat=int(now) + 5, nbf=int(now) + 5)
    assert verifier.verify(issuer.token(issuer.keys["rsa-1"], late)).reviewer_id == "alice"
    assert verifier.verify(issuer.token(issuer.keys["rsa-1"], early)).reviewer_id == "alice"


def test_the_principal_is_the_reviewer_and_the_account_not_the_token(
    issuer: LocalIssuer, verifier: OidcVerifier
) -> None:
    known = {"alice", "bob"}.__contains__
    key = issuer.keys["rsa-1"]
    a1 = verifier.authenticate(issuer.token(key, issuer.claims("alice")), reviewer_known=known)
    a2 = verifier.authenticate(issuer.token(key, issuer.claims("alice")), reviewer_known=known)
    b = verifier.authenticate(issuer.token(key, issuer.claims("bob")), reviewer_known=known)
    assert a1.kind == PrincipalKind.OIDC and a1.reviewer == "alice" and a1.bound
    assert a1.scopes == frozenset({"review"}) and not a1.delegate
    # a second token of the same account is the same credential (its jti differs): fetching a
    # fresh token never makes a second door for the two-person rule
    assert a1.credential == a2.credential == token_credential(issuer.url, "user-alice")
    assert a1.token_id != a2.token_id
    assert b.credential != a1.credential
    assert "user-alice" not in a1.credential  # the subject is hashed, not written out


# ---- refused, each with its code ----------------------------------------------------------------
def test_expired(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    token = issuer.token(issuer.keys["rsa-1"], issuer.claims("alice", now=time.time() - 3600))
    assert _refused(verifier, token, TokenExpired) == "auth.token_expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid(issuer: LocalIssuer, verifier: OidcVerifier, claim: str) -> None:
    claims = issuer.claims("alice", **{claim: int(time.time()) + 600})
    token = issuer.token(issuer.keys["rsa-1"], claims)
    assert _refused(verifier, token, TokenNotYetValid) == "auth.token_not_yet_valid"


@pytest.mark.parametrize("aud", ["another-service", ["console", "billing"]])
def test_wrong_audience(issuer: LocalIssuer, verifier: OidcVerifier, aud: Any) -> None:
    token = issuer.token(issuer.keys["rsa-1"], issuer.claims("alice", aud=aud))
    assert _refused(verifier, token, TokenAudience) == "auth.token_audience"


def test_wrong_issuer(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    # signed with the trusted issuer's own key, but claiming to come from elsewhere
    token = issuer.token(issuer.keys["rsa-1"],
                         issuer.claims("alice", iss="https://idp.example.org"))
    assert _refused(verifier, token, TokenIssuer) == "auth.token_issuer"


def test_bad_signature(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    # an attacker's own key, presented under the kid of the issuer's real one
    forged = issuer.token(make_key("rsa", kid="rsa-1"), issuer.claims("alice"))
    assert _refused(verifier, forged, TokenSignature) == "auth.token_signature"
    # a genuine token of alice's, its payload swapped for one that names bob
    header, _, signature = issuer.token(issuer.keys["rsa-1"], issuer.claims("alice")).split(".")
    _, body_bob, _ = issuer.token(issuer.keys["rsa-1"], issuer.claims("bob")).split(".")
    assert _refused(verifier, f"{header}.{body_bob}.{signature}", TokenSignature)


def test_alg_none(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    token = LocalIssuer.unsigned_token(issuer.claims("alice"), kid="rsa-1")
    assert _refused(verifier, token, TokenAlgorithm) == "auth.token_algorithm"
    # and with the signature part left off altogether
    assert _refused(verifier, token.rstrip("."), TokenMalformed)


def test_hs256_signed_with_the_public_key(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    key = issuer.keys["rsa-1"]
    for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode(),
                   key.public_jwk()["n"].encode()):
        token = LocalIssuer.hmac_token(secret, issuer.claims("alice"), kid="rsa-1")
        assert _refused(verifier, token, TokenAlgorithm) == "auth.token_algorithm"
    assert issuer.jwks_requests == 0  # refused before any key was looked up


def test_the_algorithm_must_be_the_keys(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    # RS256 in the header under the kid of the EC key (signed with some RSA key)
    rogue = make_key("rsa", kid="ec-1")
    token = issuer.token(rogue, issuer.claims("alice"))
    assert _refused(verifier, token, TokenAlgorithm) == "auth.token_algorithm"


def test_an_algorithm_outside_the_configuration(issuer: LocalIssuer, ticker: Ticker) -> None:
    only_ec = OidcVerifier(_config(issuer, algorithms=("ES256",)), clock=ticker)
    token = issuer.token(issuer.keys["rsa-1"], issuer.claims("alice"))
    assert _refused(only_ec, token, TokenAlgorithm) == "auth.token_algorithm"
    ok = issuer.token(issuer.keys["ec-1"], issuer.claims("alice"))
    assert only_ec.verify(ok).reviewer_id == "alice"


@pytest.mark.parametrize("drop", ["exp", "iat", "sub", "aud", "iss", "preferred_username"])
def test_a_missing_claim(issuer: LocalIssuer, verifier: OidcVerifier, drop: str) -> None:
    without: dict[str, Any] = {drop: None}
    token = issuer.token(issuer.keys["rsa-1"], issuer.claims("alice", **without))
    assert _refused(verifier, token, TokenClaims) == "auth.token_claims"


@pytest.mark.parametrize("value", ["alice smith", "", "a" * 65, 42, ["alice"], "älice"])
def test_a_reviewer_claim_that_is_not_a_reviewer_id(issuer: LocalIssuer, verifier: OidcVerifier,
                                                    value: Any) -> None:
    token = issuer.token(issuer.keys["rsa-1"], issuer.claims("alice", preferred_username=value))
    assert _refused(verifier, token, TokenClaims) == "auth.token_claims"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("raw", [
    "", "abc", "abc.def.ghi", "a.b", "é.é.é", "x" * 9000,
    f"{_b64(b'[' * 3000)}.{_b64(b'{}')}.{_b64(b'sig')}",  # a header nested 3,000 deep
    f"{_b64(b'[]')}.{_b64(b'{}')}.{_b64(b'sig')}",
    f"{_b64(json.dumps({'alg': 'RS256', 'kid': ['rsa-1']}).encode())}.{_b64(b'{}')}.x",
])
def test_malformed(verifier: OidcVerifier, raw: str) -> None:
    assert _refused(verifier, raw, TokenMalformed) == "auth.token_malformed"


def test_a_token_without_a_kid(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    import jwt

    key = issuer.keys["rsa-1"]
    token = jwt.encode(issuer.claims("alice"), key.private, algorithm="RS256")
    assert _refused(verifier, token, TokenUnknownKey) == "auth.token_unknown_key"


def test_looks_like_jwt(issuer: LocalIssuer) -> None:
    assert looks_like_jwt(issuer.token(issuer.keys["rsa-1"], issuer.claims("alice")))
    assert not looks_like_jwt("lf_abcdefgh_" + "x" * 43)


# ---- the reviewer must exist --------------------------------------------------------------------
def _reviewer_known(db: Database, svc: ReviewService) -> Callable[[str], bool]:
    def known(reviewer_id: str) -> bool:
        with db.transaction() as s:
            return any(r["id"] == reviewer_id and r["active"] for r in svc.list_reviewers(s))
    return known


def test_a_genuine_token_for_an_unknown_reviewer_is_refused(
    issuer: LocalIssuer, verifier: OidcVerifier, seeded: Database, svc: ReviewService
) -> None:
    known = _reviewer_known(seeded, svc)
    key = issuer.keys["ec-1"]
    p = verifier.authenticate(issuer.token(key, issuer.claims("sam")), reviewer_known=known)
    assert p.reviewer == "sam"
    with pytest.raises(UnknownReviewer) as info:
        verifier.authenticate(issuer.token(key, issuer.claims("mallory")), reviewer_known=known)
    assert info.value.code == "auth.unknown_reviewer" and HTTP_STATUS[info.value.kind] == 403


# ---- keys: refresh on an unknown kid, with a floor; rotation; outages ---------------------------
def test_unknown_kid_refreshes_once_per_floor_and_a_rotated_key_is_picked_up(
    issuer: LocalIssuer, verifier: OidcVerifier, ticker: Ticker
) -> None:
    old = issuer.keys["rsa-1"]
    assert verifier.verify(issuer.token(old, issuer.claims("alice"))).reviewer_id == "alice"
    assert issuer.jwks_requests == 1

    new = issuer.add_key("rsa", kid="rsa-2", publish=False)
    token = issuer.token(new, issuer.claims("alice"))
    ticker.advance(61)  # past the 60 s floor: the unknown kid is worth one look
    assert _refused(verifier, token, TokenUnknownKey) == "auth.token_unknown_key"
    assert issuer.jwks_requests == 2

    issuer.published.append("rsa-2")  # the issuer rotates
    # made-up kids, and the new key itself, within the floor: no request reaches the issuer
    for i in range(20):
        ghost = issuer.token(make_key("rsa", kid=f"ghost-{i}"), issuer.claims("alice"))
        _refused(verifier, ghost, TokenUnknownKey)
    _refused(verifier, token, TokenUnknownKey)
    assert issuer.jwks_requests == 2

    ticker.advance(61)
    assert verifier.verify(token).key_id == "rsa-2"
    assert issuer.jwks_requests == 3

    # the old key is withdrawn: trusted until the cached set's lifetime ends, then not
    issuer.withdraw("rsa-1")
    assert verifier.verify(issuer.token(old, issuer.claims("alice"))).key_id == "rsa-1"
    ticker.advance(3600)
    _refused(verifier, issuer.token(old, issuer.claims("alice")), TokenUnknownKey)
    assert issuer.jwks_requests == 4
    assert verifier.verify(token).key_id == "rsa-2"


def test_an_unreachable_issuer(issuer: LocalIssuer, ticker: Ticker) -> None:
    v = OidcVerifier(_config(issuer), clock=ticker)
    key = issuer.keys["rsa-1"]
    issuer.failing = 503
    with pytest.raises(JwksUnavailable) as info:
        v.verify(issuer.token(key, issuer.claims("alice")))
    assert info.value.code == "auth.jwks_unavailable" and HTTP_STATUS[info.value.kind] == 503
    # within the floor, not even a retry
    with pytest.raises(JwksUnavailable):
        v.verify(issuer.token(key, issuer.claims("alice")))
    assert issuer.jwks_requests == 1

    issuer.failing = None
    ticker.advance(61)
    assert v.verify(issuer.token(key, issuer.claims("alice"))).reviewer_id == "alice"

    # the issuer goes away: cached keys serve past their lifetime, up to the staleness limit
    issuer.stop()
    ticker.advance(3600 + 1)
    assert v.verify(issuer.token(key, issuer.claims("alice"))).reviewer_id == "alice"
    ticker.advance(24 * 3600)
    with pytest.raises(JwksUnavailable):
        v.verify(issuer.token(key, issuer.claims("alice")))


def test_a_jwks_redirect_is_not_followed(issuer: LocalIssuer, ticker: Ticker) -> None:
    issuer.failing = 302
    v = OidcVerifier(_config(issuer), clock=ticker)
    with pytest.raises(JwksUnavailable):
        v.verify(issuer.token(issuer.keys["rsa-1"], issuer.claims("alice")))


def test_keys_from_a_file_and_their_rotation(issuer: LocalIssuer, ticker: Ticker,
                                             tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    v = OidcVerifier(_config(issuer, jwks_url=None, jwks_path=path), clock=ticker)
    assert v.verify(issuer.token(issuer.keys["ec-1"], issuer.claims("bob"))).reviewer_id == "bob"
    new = issuer.add_key("ec", kid="ec-2")
    path.write_text(json.dumps(issuer.jwks()))
    ticker.advance(61)
    assert v.verify(issuer.token(new, issuer.claims("bob"))).key_id == "ec-2"
    assert issuer.jwks_requests == 0


def test_only_public_signing_keys_of_allowed_kinds_are_used(issuer: LocalIssuer,
                                                            verifier: OidcVerifier) -> None:
    """What a broken (or hostile) JWKS may hold, and that none of it verifies anything."""
    secret = b"s" * 32
    weak = make_key("rsa1024", kid="weak")
    p384 = make_key("ec384", kid="p384")
    leaky = make_key("rsa", kid="leaky")
    enc = make_key("rsa", kid="enc")
    issuer.extra_jwks += [
        {"kty": "oct", "kid": "sym", "k": LocalIssuer.hmac_token(secret, {}, kid="x")[:10]},
        weak.public_jwk(), p384.public_jwk(), leaky.private_jwk(),
        {**enc.public_jwk(), "use": "enc"},
        {**make_key("rsa").public_jwk(), "kid": ""},
        "not a key",
    ]
    claims = issuer.claims("alice")
    _refused(verifier, LocalIssuer.hmac_token(secret, claims, kid="sym"), TokenAlgorithm)
    _refused(verifier, issuer.token(p384, claims), TokenAlgorithm)  # ES384: not allowed
    for key in (weak, leaky, enc):
        assert _refused(verifier, issuer.token(key, claims), TokenUnknownKey)
    # the good keys next to them still work
    assert verifier.verify(issuer.token(issuer.keys["rsa-1"], claims)).reviewer_id == "alice"


@pytest.mark.parametrize("content", [b"[" * 5000, b"not json", b'{"keys": "none"}',
                                     b'{"keys": []}', b"{" + b" " * (300 * 1024) + b"}"])
def test_an_unusable_jwks_file_is_unavailable_not_a_crash(
    issuer: LocalIssuer, ticker: Ticker, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    v = OidcVerifier(_config(issuer, jwks_url=None, jwks_path=path), clock=ticker)
    with pytest.raises(JwksUnavailable):
        v.verify(issuer.token(issuer.keys["rsa-1"], issuer.claims("alice")))


def test_an_oversized_jwks_response_is_refused(issuer: LocalIssuer, ticker: Ticker) -> None:
    issuer.extra_jwks.append("x" * (300 * 1024))
    v = OidcVerifier(_config(issuer), clock=ticker)
    with pytest.raises(JwksUnavailable):
        v.verify(issuer.token(issuer.keys["rsa-1"], issuer.claims("alice")))
    issuer.extra_jwks.clear()
    ticker.advance(61)
    assert v.verify(issuer.token(issuer.keys["rsa-1"], issuer.claims("alice"))).key_id == "rsa-1"
