"""A local identity provider for the tests: signing keys made by the tests (cryptography), a real
uvicorn on 127.0.0.1 serving the JWKS, and tokens minted with PyJWT.

A fake only in that it stands for the platform's identity provider (the user's system, not
ours); the keys, the HTTP server and the tokens are real.  The tests rotate keys (publish a new
one, withdraw an old one), make the JWKS endpoint fail, and count its requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KeyKind = Literal["rsa", "ec", "rsa1024", "ec384"]
AUDIENCE = "lookfirst"


@dataclass
class IssuerKey:
    kid: str
    kind: KeyKind
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def alg(self) -> str:
        return {"rsa": "RS256", "rsa1024": "RS256", "ec": "ES256", "ec384": "ES384"}[self.kind]

    def public_jwk(self) -> dict[str, Any]:
        k = self.private
        text = (RSAAlgorithm.to_jwk(k.public_key()) if isinstance(k, rsa.RSAPrivateKey)
                else ECAlgorithm.to_jwk(k.public_key()))
        return {**json.loads(text), "kid": self.kid, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        """The key with its private part, as a careless issuer might publish it."""
        k = self.private
        text = (RSAAlgorithm.to_jwk(k) if isinstance(k, rsa.RSAPrivateKey)
                else ECAlgorithm.to_jwk(k))
        return {**json.loads(text), "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_key(kind: KeyKind = "rsa", kid: str | None = None) -> IssuerKey:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "rsa1024":
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    elif kind == "ec":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ec.generate_private_key(ec.SECP384R1())
    return IssuerKey(kid or f"{kind}-{uuid.uuid4().hex[:8]}", kind, private)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class LocalIssuer:
    """Start with `start()` (or `with`); `url` is the issuer (`iss`), `jwks_url` its key set."""

    keys: dict[str, IssuerKey] = field(default_factory=dict)
    #: kids in the published JWKS, in order
    published: list[str] = field(default_factory=list)
    #: extra raw entries in the JWKS (symmetric keys, private keys: what a broken issuer serves)
    extra_jwks: list[Any] = field(default_factory=list)
    #: when set, the JWKS endpoint answers this status instead
    failing: int | None = None
    jwks_requests: int = 0
    url: str = ""
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    # ---- keys ------------------------------------------------------------------------------
    def add_key(self, kind: KeyKind = "rsa", *, kid: str | None = None,
                publish: bool = True) -> IssuerKey:
        key = make_key(kind, kid)
        self.keys[key.kid] = key
        if publish:
            self.published.append(key.kid)
        return key

    def withdraw(self, kid: str) -> None:
        self.published.remove(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.keys[k].public_jwk() for k in self.published] + self.extra_jwks}

    # ---- tokens ----------------------------------------------------------------------------
    def claims(self, reviewer: str = "alice", *, now: float | None = None, ttl_s: float = 300,
               **overrides: Any) -> dict[str, Any]:
        """A valid claim set for `reviewer`; an override of None removes that claim."""
        t = int(time.time() if now is None else now)
        base: dict[str, Any] = {
            "iss": self.url, "aud": AUDIENCE, "sub": f"user-{reviewer}",
            "preferred_username": reviewer, "iat": t, "exp": t + int(ttl_s),
            "jti": uuid.uuid4().hex,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, key: IssuerKey, claims: dict[str, Any], *,
              headers: dict[str, Any] | None = None) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deliberately weak test key warns on signing
            return jwt.encode(claims, key.private, algorithm=key.alg,
                              headers={"kid": key.kid, **(headers or {})})

    @staticmethod
    def hmac_token(secret: bytes, claims: dict[str, Any], *, kid: str) -> str:
        """An HS256 token made by hand: the forgery that signs with what is public (PyJWT
        itself refuses to use a PEM public key as an HMAC secret, so the attacker does not)."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(mac)}"

    @staticmethod
    def unsigned_token(claims: dict[str, Any], *, kid: str) -> str:
        """`alg: none`, through PyJWT's own encoder."""
        return jwt.encode(claims, "", algorithm="none", headers={"kid": kid})

    # ---- the HTTP server -------------------------------------------------------------------
    async def _jwks_endpoint(self, request: Request) -> Response:
        self.jwks_requests += 1
        if self.failing is not None:
            return Response(status_code=self.failing)
        return JSONResponse(self.jwks())

    def start(self) -> LocalIssuer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = Starlette(routes=[Route("/jwks", self._jwks_endpoint)])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True, name="local-issuer")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local issuer did not start")
            time.sleep(0.01)
        return self

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = self._thread = None

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
