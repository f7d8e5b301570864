"""OpenID Connect bearer tokens from the platform's identity provider: the issuer's signing keys
(JWKS, from a URL or a file, cached), verification with PyJWT, and the reviewer a token names.

PyJWT parses and verifies; this module decides which keys and algorithms it may use and turns
each refusal into an error with its own code.  The rules that matter:
- algorithms are fixed by configuration (RS256, ES256), never read from the token: `none` and
  HS256 (an HMAC "signed" with the public key) are refused before any key is touched, and a
  token's algorithm must be its key's;
- a JWKS is cached; an unknown `kid` triggers at most one refresh per `jwks_min_refresh_s`, so
  a stream of made-up kids cannot turn this service into a flood against the identity provider;
- a JWKS may hold only public RSA (2048 bits or more) and P-256 keys for signing; anything
  else in it is ignored (and logged), never used.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt

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
from pipeline.auth.principal import DELEGATE, REVIEWER_ID, Principal
from pipeline.errors import ConfigurationError

__all__ = [
    "ALGORITHMS",
    "from_settings",
    "JwksCache",
    "OidcConfig",
    "OidcVerifier",
    "VerifiedToken",
    "looks_like_jwt",
]

log = logging.getLogger(__name__)

#: the only algorithms a configuration may allow: asymmetric, and what identity providers use
ALGORITHMS: Final = ("RS256", "ES256")
_KEY_TYPES: Final = {"RS256": "RSA", "ES256": "EC"}
_MIN_RSA_BITS: Final = 2048
#: claims a token must carry; the reviewer claim is checked on its own
_REQUIRED: Final = ["exp", "iat", "iss", "aud", "sub"]
_MAX_JWKS_BYTES: Final = 256 * 1024
_MAX_KEYS: Final = 100


def looks_like_jwt(raw: str) -> bool:
    """Whether a bearer credential is shaped like a JWT (three dot-separated parts) rather than
    a lookfirst API key (`lf_…`): which verifier should look at it."""
    return raw.count(".") == 2 and not raw.startswith("lf_")


def _https_or_loopback(url: str, what: str) -> None:
    """Keys and issuers are trusted only over TLS; plain HTTP only on this machine (tests,
    a sidecar).  Anything else could be rewritten on the way."""
    u = urlsplit(url)
    if u.scheme == "https" and u.hostname:
        return
    if u.scheme == "http" and u.hostname:
        host = u.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return
    raise ConfigurationError(f"the OIDC {what} must be an https:// URL (http:// only on loopback)")


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Where tokens come from and what they must say.  Validated on construction."""

    #: the `iss` every token must carry, exactly
    issuer: str
    #: the `aud` this service is known by at the identity provider
    audience: str
    #: the identity provider's JWKS document (its `jwks_uri`)...
    jwks_url: str | None = None
    #: ...or a file holding it (an air-gapped deployment, or keys pinned by the operator)
    jwks_path: Path | None = None
    #: the claim that names the reviewer (`sub`, `preferred_username`, `email`, a custom one)
    reviewer_claim: str = "sub"
    #: a subset of ALGORITHMS
    algorithms: tuple[str, ...] = ALGORITHMS
    #: what a verified token may do (never `delegate`: a token is its reviewer's own)
    scopes: frozenset[str] = frozenset({"review"})
    #: clock skew allowed on exp, nbf and iat
    leeway_s: float = 30.0
    #: a JWKS is fetched again after this long, to see rotations and removals
    jwks_ttl_s: float = 3600.0
    #: at most one fetch per this many seconds, whatever tokens arrive
    jwks_min_refresh_s: float = 60.0
    #: past this age, keys that could not be refreshed are no longer trusted (503)
    jwks_max_stale_s: float = 24 * 3600.0
    jwks_timeout_s: float = 5.0
    max_token_bytes: int = 8192

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ConfigurationError("OIDC needs an issuer and an audience")
        _https_or_loopback(self.issuer, "issuer")
        if (self.jwks_url is None) == (self.jwks_path is None):
            raise ConfigurationError("OIDC needs exactly one of a JWKS URL and a JWKS file")
        if self.jwks_url is not None:
            _https_or_loopback(self.jwks_url, "JWKS URL")
        bad = [a for a in self.algorithms if a not in ALGORITHMS]
        if bad or not self.algorithms:
            raise ConfigurationError(
                f"OIDC algorithms must be among {', '.join(ALGORITHMS)} (got {bad or 'none'})")
        if not self.reviewer_claim:
            raise ConfigurationError("OIDC needs the claim that names the reviewer")
        if DELEGATE in self.scopes:
            raise ConfigurationError("an OIDC token is its reviewer's own: no delegate scope")
        if not 0 <= self.leeway_s <= 300:
            raise ConfigurationError("OIDC leeway must be 0 to 300 seconds")
        if not 0 < self.jwks_min_refresh_s <= self.jwks_ttl_s <= self.jwks_max_stale_s:
            raise ConfigurationError(
                "OIDC JWKS timings must satisfy 0 < min refresh <= TTL <= max stale")
        if self.jwks_timeout_s <= 0 or self.max_token_bytes < 256:
            raise ConfigurationError("OIDC timeout must be positive, max token size >= 256")


# ---- the issuer's keys --------------------------------------------------------------------------
class JwksCache:
    """The identity provider's signing keys, by kid.  Thread-safe; a fetch happens under the
    lock, so concurrent requests wait for one fetch instead of each making their own."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self._keys: dict[str, list[jwt.PyJWK]] | None = None
        self._fetched_at = 0.0  # last successful load
        self._attempted_at: float | None = None  # last load tried, successful or not
        self._lock = threading.Lock()

    def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key `kid` for algorithm `alg`; refreshes on a stale set or an unknown kid, no
        more often than the floor allows."""
        cfg = self.config
        with self._lock:
            now = self.clock()
            if (self._keys is None or now - self._fetched_at >= cfg.jwks_ttl_s) and self._due(now):
                self._refresh(now)
            if self._keys is None or now - self._fetched_at > cfg.jwks_max_stale_s:
                raise JwksUnavailable()
            found = self._find(kid, alg)
            if found is None and self._due(now):
                self._refresh(now)
                found = self._find(kid, alg)
            if found is None:
                raise TokenUnknownKey()
            return found

    def _due(self, now: float) -> bool:
        last = self._attempted_at
        return last is None or now - last >= self.config.jwks_min_refresh_s

    def _find(self, kid: str, alg: str) -> jwt.PyJWK | None:
        assert self._keys is not None
        candidates = self._keys.get(kid)
        if not candidates:
            return None
        for k in candidates:
            if k.algorithm_name == alg:
                return k
        # the kid exists, for another algorithm: an RS256 header on an EC key (or the reverse)
        # is a forgery attempt or a broken issuer, never something to "try anyway"
        raise TokenAlgorithm("The token's algorithm is not the algorithm of the key it names.")

    def _refresh(self, now: float) -> None:
        """Load the JWKS; on failure keep what we had (the callers decide whether it is still
        good enough) and say why in the log."""
        self._attempted_at = now
        try:
            keys = self._parse(self._read())
        except (OSError, httpx.HTTPError, ValueError, RecursionError) as exc:
            log.warning("JWKS could not be loaded", extra={"error": type(exc).__name__,
                                                          "detail": str(exc)[:200]})
            return
        self._keys, self._fetched_at = keys, now

    def _read(self) -> bytes:
        cfg = self.config
        if cfg.jwks_path is not None:
            with open(cfg.jwks_path, "rb") as fh:
                data = fh.read(_MAX_JWKS_BYTES + 1)
        else:
            assert cfg.jwks_url is not None
            # no redirects: the JWKS is where it was configured to be, not where a 302 points
            with httpx.Client(timeout=cfg.jwks_timeout_s, follow_redirects=False) as client, \
                    client.stream("GET", cfg.jwks_url,
                                  headers={"Accept": "application/json"}) as r:
                if r.status_code != 200:
                    raise ValueError(f"JWKS answered HTTP {r.status_code}")
                data = b""
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > _MAX_JWKS_BYTES:
                        break  # stop reading: an endless body must not fill memory
        if len(data) > _MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {_MAX_JWKS_BYTES} bytes")
        return data

    def _parse(self, data: bytes) -> dict[str, list[jwt.PyJWK]]:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("a JWKS is an object with a `keys` list")
        out: dict[str, list[jwt.PyJWK]] = {}
        skipped = 0
        for jwk in doc["keys"][:_MAX_KEYS]:
            key = self._usable(jwk)
            if key is None:
                skipped += 1
                continue
            out.setdefault(jwk["kid"], []).append(key)
        if skipped:
            log.warning("JWKS keys ignored (not usable signing keys)", extra={"count": skipped})
        if not out:
            raise ValueError("the JWKS holds no usable signing key")
        return out

    def _usable(self, jwk: Any) -> jwt.PyJWK | None:
        """A public signing key of an allowed algorithm, or None."""
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            return None
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC"):
            return None  # an `oct` (symmetric) key must never verify anything
        if "d" in jwk:
            log.error("JWKS publishes private key material; key ignored",
                      extra={"kid": str(jwk["kid"])[:64]})
            return None
        alg = jwk.get("alg")
        if alg is not None and alg not in self.config.algorithms:
            return None
        try:
            key = jwt.PyJWK(dict(jwk))
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        if key.algorithm_name not in self.config.algorithms:
            return None  # e.g. an EC key on P-384 (ES384)
        if _KEY_TYPES[key.algorithm_name] != jwk["kty"]:
            return None
        if jwk["kty"] == "RSA" and getattr(key.key, "key_size", 0) < _MIN_RSA_BITS:
            return None
        return key


# ---- tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a verified token establishes; the rest of its claims are dropped (personal data)."""

    issuer: str
    subject: str
    reviewer_id: str
    token_id: str | None
    expires_at: int
    key_id: str
    algorithm: str


#: PyJWT's refusals, most specific first (InvalidSignatureError is a DecodeError)
_REFUSALS: Final[tuple[tuple[type[Exception], type[TokenInvalid]], ...]] = (
    (jwt.InvalidSignatureError, TokenSignature),
    (jwt.DecodeError, TokenMalformed),
    (jwt.ExpiredSignatureError, TokenExpired),
    (jwt.ImmatureSignatureError, TokenNotYetValid),
    (jwt.InvalidIssuedAtError, TokenNotYetValid),
    (jwt.InvalidAudienceError, TokenAudience),
    (jwt.InvalidIssuerError, TokenIssuer),
    (jwt.MissingRequiredClaimError, TokenClaims),
    (jwt.exceptions.InvalidSubjectError, TokenClaims),
    (jwt.exceptions.InvalidJTIError, TokenClaims),
    (jwt.InvalidAlgorithmError, TokenAlgorithm),
    (jwt.InvalidKeyError, TokenUnknownKey),
)


class OidcVerifier:
    """Verifies bearer tokens against one issuer; `authenticate` turns one into a Principal."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.keys = JwksCache(config, clock=clock)

    def verify(self, token: str) -> VerifiedToken:
        """The token's issuer, subject and reviewer, or a TokenInvalid (or JwksUnavailable)."""
        try:
            return self._verify(token)
        except TokenInvalid as exc:
            log.info("bearer token refused", extra={"code": exc.code})
            raise

    def authenticate(self, token: str, *, reviewer_known: Callable[[str], bool]) -> Principal:
        """The principal a token authenticates: its reviewer must be registered and active
        (`reviewer_known`, e.g. a cached lookup in the review database)."""
        v = self.verify(token)
        if not reviewer_known(v.reviewer_id):
            log.info("bearer token refused", extra={"code": UnknownReviewer.code})
            raise UnknownReviewer()
        return Principal.token(issuer=v.issuer, subject=v.subject, reviewer=v.reviewer_id,
                               scopes=self.config.scopes, token_id=v.token_id)

    def _verify(self, token: str) -> VerifiedToken:
        cfg = self.config
        if not token or len(token) > cfg.max_token_bytes or not token.isascii():
            raise TokenMalformed()
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise TokenMalformed() from None
        alg = header.get("alg")
        # before any key is looked up: `none`, HS256 and every other algorithm we do not allow
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise TokenAlgorithm()
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise TokenUnknownKey("The token names no signing key (kid).")
        key = self.keys.key(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=list(cfg.algorithms), audience=cfg.audience,
                issuer=cfg.issuer, leeway=cfg.leeway_s,
                options={"require": list(_REQUIRED), "verify_signature": True,
                         "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None
        except RecursionError:
            raise TokenMalformed() from None
        reviewer = claims.get(cfg.reviewer_claim)
        if not isinstance(reviewer, str) or not REVIEWER_ID.fullmatch(reviewer):
            raise TokenClaims(f"The token's {cfg.reviewer_claim!r} claim does not name a usable "
                              "reviewer id.")
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= 128):
            raise TokenClaims("The token's jti claim is not usable.")
        return VerifiedToken(issuer=claims["iss"], subject=claims["sub"], reviewer_id=reviewer,
                             token_id=jti, expires_at=int(claims["exp"]), key_id=kid,
                             algorithm=alg)


def from_settings(
    issuer: str | None, *, audience: str | None, jwks_url: str | None,
    jwks_path: Path | None, reviewer_claim: str,
) -> OidcVerifier | None:
    """The verifier the settings ask for (LOOKFIRST_OIDC_*), or None when no issuer is set;
    a half-made configuration is a ConfigurationError, never a silently open door."""
    if issuer is None:
        if audience or jwks_url or jwks_path:
            raise ConfigurationError("LOOKFIRST_OIDC_ISSUER is not set, but other OIDC "
                                     "settings are")
        return None
    return OidcVerifier(OidcConfig(issuer=issuer, audience=audience or "", jwks_url=jwks_url,
                                   jwks_path=jwks_path, reviewer_claim=reviewer_claim))


def _refusal(exc: Exception) -> TokenInvalid:
    for cls, ours in _REFUSALS:
        if isinstance(exc, cls):
            return ours()
    return TokenInvalid()

