"""The OIDC configuration refuses what would make token verification unsafe (no I/O here:
verification itself is tested against a local identity provider in tests/integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.auth.oidc import ALGORITHMS, OidcConfig
from pipeline.errors import ConfigurationError

GOOD: dict[str, Any] = dict(issuer="https://idp.example.org/realms/x", audience="lookfirst",
                            jwks_url="https://idp.example.org/realms/x/certs")


@pytest.mark.parametrize("kw", [
    {},
    {"issuer": "http://127.0.0.1:8081", "jwks_url": "http://127.0.0.1:8081/jwks"},
    {"jwks_url": "http://localhost:9000/jwks"},
    {"jwks_url": "http://[::1]:9000/jwks"},
    {"jwks_url": None, "jwks_path": Path("jwks.json")},
    {"algorithms": ("ES256",)},
    {"reviewer_claim": "email", "leeway_s": 0},
])
def test_accepted(kw: dict[str, Any]) -> None:
    cfg = OidcConfig(**{**GOOD, **kw})
    assert set(cfg.algorithms) <= set(ALGORITHMS)


@pytest.mark.parametrize("kw", [
    {"issuer": ""},
    {"audience": ""},
    {"jwks_url": "http://idp.example.org/certs"},  # keys over plain HTTP, off this machine
    {"issuer": "http://idp.example.org"},
    {"jwks_url": "http://10.0.0.5/certs"},
    {"jwks_url": "file:///etc/jwks.json"},
    {"jwks_url": None},  # no source
    {"jwks_path": Path("jwks.json")},  # two sources
    {"algorithms": ("HS256",)},
    {"algorithms": ("none",)},
    {"algorithms": ("RS256", "HS256")},
    {"algorithms": ()},
    {"scopes": frozenset({"review", "delegate"})},
    {"reviewer_claim": ""},
    {"leeway_s": 3600},
    {"jwks_min_refresh_s": 0},
    {"jwks_ttl_s": 10, "jwks_min_refresh_s": 60},
    {"jwks_max_stale_s": 60},
    {"max_token_bytes": 10},
])
def test_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        OidcConfig(**{**GOOD, **kw})
    assert info.value.code == "config.invalid"
