"""Shared fixtures: real SQLite and real PostgreSQL databases, fresh for each test."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from review.db import Database

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

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("LOOKFIRST_TEST_DATABASE_URL")
IN_CI = bool(os.environ.get("CI"))


def _require_pg() -> str:
    if PG_URL:
        return PG_URL
    if IN_CI:
        pytest.fail("CI must set LOOKFIRST_TEST_DATABASE_URL (PostgreSQL tests may not skip in CI)")
    pytest.skip("LOOKFIRST_TEST_DATABASE_URL is not set: no PostgreSQL on this laptop")




def fresh_pg_database(base_url: str) -> Iterator[str]:
    """Create a new, empty database next to the one in base_url; drop it afterwards."""
    url = make_url(base_url)
    name = f"lookfirst_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def pg_base_url() -> str:
    """The PostgreSQL server's URL (fails in CI without one, skips on a laptop)."""
    return _require_pg()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lookfirst.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_pg_database(_require_pg())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lookfirst.db'}"
    else:
        yield from fresh_pg_database(_require_pg())


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


class FakeClock:
    """A clock the tests move by hand, so leases and windows expire without sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
