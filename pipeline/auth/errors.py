"""Refusals of authentication and identity: each has a stable code, so a client (and a test)
can tell an expired token from a foreign one without reading prose.

They extend the API-key errors of `pipeline.apikeys` (401 `AuthError`, 403 `Forbidden`), so a
route that already turns those into responses needs nothing new.  Details never repeat what the
caller sent: a token, a claim value or a header may be personal data.
"""

from __future__ import annotations

from pipeline.apikeys import AuthError, Forbidden
from pipeline.errors import DependencyUnavailable, ErrorKind, PipelineError

__all__ = [
    "DelegateRequired",
    "JwksUnavailable",
    "ReviewerBound",
    "ReviewerRequired",
    "SameOperator",
    "TokenAlgorithm",
    "TokenAudience",
    "TokenClaims",
    "TokenExpired",
    "TokenInvalid",
    "TokenIssuer",
    "TokenMalformed",
    "TokenNotYetValid",
    "TokenSignature",
    "TokenUnknownKey",
    "UnknownReviewer",
]


# ---- bearer tokens (OpenID Connect): 401 ------------------------------------------------------
class TokenInvalid(AuthError):
    """The bearer token is not valid."""

    code = "auth.token_invalid"


class TokenMalformed(TokenInvalid):
    """The bearer token is not a well-formed signed JWT."""

    code = "auth.token_malformed"


class TokenAlgorithm(TokenInvalid):
    """The token's signing algorithm is not accepted (only RS256 and ES256, matching the key)."""

    code = "auth.token_algorithm"


class TokenUnknownKey(TokenInvalid):
    """The token names a signing key (kid) that the identity provider does not publish."""

    code = "auth.token_unknown_key"


class TokenSignature(TokenInvalid):
    """The token's signature does not verify."""

    code = "auth.token_signature"


class TokenExpired(TokenInvalid):
    """The token has expired; get a fresh one from the identity provider."""

    code = "auth.token_expired"


class TokenNotYetValid(TokenInvalid):
    """The token is not valid yet (its nbf or iat lies in the future)."""

    code = "auth.token_not_yet_valid"


class TokenIssuer(TokenInvalid):
    """The token was issued by an identity provider this service does not trust."""

    code = "auth.token_issuer"


class TokenAudience(TokenInvalid):
    """The token was issued for another audience, not for this service."""

    code = "auth.token_audience"


class TokenClaims(TokenInvalid):
    """The token lacks a required claim, or a claim has an unusable value."""

    code = "auth.token_claims"


class JwksUnavailable(DependencyUnavailable):
    """The identity provider's signing keys (JWKS) could not be read; try again shortly."""

    code = "auth.jwks_unavailable"


# ---- who acts: 403 ----------------------------------------------------------------------------
class UnknownReviewer(Forbidden):
    """The credential is genuine, but the reviewer it names is not registered or not active."""

    code = "auth.unknown_reviewer"


class ReviewerBound(Forbidden):
    """This credential acts as its own reviewer; naming a reviewer (X-Reviewer or the body's
    `reviewer`) is refused for it."""

    code = "auth.reviewer_bound"


class DelegateRequired(Forbidden):
    """This credential is not bound to a reviewer and may not act for one: use a reviewer's own
    key or token, or a credential with the `delegate` scope."""

    code = "auth.delegate_required"


class ReviewerRequired(PipelineError):
    """A delegate credential must name the reviewer it acts for (X-Reviewer or the body's
    `reviewer`)."""

    code = "auth.reviewer_required"
    kind = ErrorKind.UNPROCESSABLE


class SameOperator(Forbidden):
    """This operator account (or a shared role account) already supplied a verdict on this
    item: the second of two people must confirm from another operator account."""

    code = "auth.same_operator"
