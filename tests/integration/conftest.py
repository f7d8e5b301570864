"""Fixtures for the integration tests: a review service on the fake clock with reviewers
seeded, a live API server per module (its `api_server` marker says how it runs), and a local
OpenID Connect issuer with one RSA key per module (`idp`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from review.db import Database
from review.service import ReviewService
from tests.integration.api_conftest_helpers import ApiServer, running
from tests.oidc_issuer import LocalIssuer
from tests.review_support import FakeClock, make_config, seed_reviewers


@pytest.fixture
def svc(clock: FakeClock) -> ReviewService:
    return ReviewService(make_config(), clock=clock)


@pytest.fixture
def seeded(db: Database, svc: ReviewService) -> Database:
    """The `db` fixture (SQLite and PostgreSQL) with the six reviewers of review_support."""
    with db.transaction() as s:
        seed_reviewers(svc, s)
    return db


def _api_server(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("api_server")
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The module's own server (one uvicorn process, its own data directory and database),
    started as the module's `pytest.mark.api_server(scorer=..., env=...)` says."""
    options = _api_server(request)
    options.pop("client_scopes", None)
    data_dir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield from running(data_dir, **options)


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest, api: ApiServer) -> Iterator[httpx.Client]:
    """A client of `api` with a key of the marker's `client_scopes` (classify by default)."""
    scopes = _api_server(request).get("client_scopes", ("classify",))
    with api.client(api.key(*scopes)) as c:
        yield c


@pytest.fixture(scope="module")
def idp() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer()
    issuer.add_key("rsa", kid="rsa-1")
    with issuer:
        yield issuer
