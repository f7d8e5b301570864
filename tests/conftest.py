"""Shared fixtures: real SQLite and real PostgreSQL databases, fresh for each test (copies of
a template migrated once per session), and the hand-moved clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from review.db import Database
from tests.databases import PgServer, SqliteTemplate, require_pg
from tests.review_support import FakeClock

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("LOOKFIRST_HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    # declared here, next to the fixtures that read them
    config.addinivalue_line(
        "markers",
        "migrations: tests of the migrations themselves: sqlite_url, pg_url and db_url are "
        "empty databases, and `db` migrates its own from scratch",
    )
    config.addinivalue_line(
        "markers",
        "api_server(scorer, env, client_scopes): the module's `api` server (tests/integration) "
        "and the scopes of its `client`'s key",
    )


def _empty(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("migrations") is not None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    return SqliteTemplate(tmp_path_factory.mktemp("template") / "lookfirst.db")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Set up on first use, so a session without PostgreSQL tests never connects."""
    server = PgServer(require_pg())
    yield server
    server.close()


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    path = tmp_path / "lookfirst.db"
    if _empty(request):
        return f"sqlite:///{path}"
    template: SqliteTemplate = request.getfixturevalue("sqlite_template")
    return template.copy_to(path)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[str]:
    yield from pg_server.empty() if _empty(request) else pg_server.copy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A database at head (or empty, under the `migrations` marker), on each backend."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def db(request: pytest.FixtureRequest, db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    if _empty(request):
        database.upgrade()  # the migrations under test build the schema, as on a new install
    yield database
    database.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
