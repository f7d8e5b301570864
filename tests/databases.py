"""Test databases: a PostgreSQL database or SQLite file of its own for each test, copied from
a template migrated once per session instead of migrating each one again."""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from review.db import Database

PG_URL = os.environ.get("LOOKFIRST_TEST_DATABASE_URL")
IN_CI = bool(os.environ.get("CI"))


def require_pg() -> str:
    """The PostgreSQL server's URL (fails in CI without one, skips on a laptop)."""
    if PG_URL:
        return PG_URL
    if IN_CI:
        pytest.fail("CI must set LOOKFIRST_TEST_DATABASE_URL (PostgreSQL tests may not skip in CI)")
    pytest.skip("LOOKFIRST_TEST_DATABASE_URL is not set: no PostgreSQL on this laptop")


def _admin(base_url: str) -> Engine:
    return create_engine(make_url(base_url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def _create(admin: Engine, name: str, template: str | None = None) -> None:
    # names are ours (a fixed prefix and hex digits): safe to quote into the statement
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"{copy}'))


def _drop(admin: Engine, name: str) -> None:
    with admin.connect() as c:
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                  {"n": name})
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


def _unique(prefix: str) -> str:
    # unique across the test sessions of every worktree that share the server
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class PgServer:
    """The PostgreSQL server the tests run on: each test gets a database of its own, either
    empty or a copy (`CREATE DATABASE … TEMPLATE`) of a template migrated to head once per
    session, instead of migrating a new database for every test.

    PostgreSQL refuses to copy a database that has a session open, so nothing may connect to
    the template once it is built: the engine that migrated it is disposed, and the server is
    told to allow no connections to it at all.

    A test's database is dropped as soon as its test is over, not in the background: DROP
    DATABASE discards the database's pages from shared buffers and then waits for a
    checkpoint, so a drop that runs while the next test writes makes that checkpoint write the
    next test's pages to disk too (tried: the drops took twice as long in all)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._admin = _admin(base_url)
        self._template: str | None = None

    def url(self, name: str) -> str:
        return make_url(self.base_url).set(database=name).render_as_string(hide_password=False)

    def empty(self) -> Iterator[str]:
        """A fixture body: a new, empty database, dropped afterwards."""
        yield from self._database(None)

    def copy(self) -> Iterator[str]:
        """A fixture body: a new database at head (the template's copy), dropped afterwards."""
        yield from self._database(self._migrated_template())

    def _migrated_template(self) -> str:
        if self._template is None:
            name = _unique("lookfirst_tpl")
            _create(self._admin, name)
            try:
                database = Database(self.url(name))
                try:
                    database.upgrade()
                finally:
                    database.dispose()
                with self._admin.connect() as c:
                    c.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            except BaseException:
                _drop(self._admin, name)
                raise
            self._template = name
        return self._template

    def _database(self, template: str | None) -> Iterator[str]:
        name = _unique("lookfirst_t")
        _create(self._admin, name, template)
        try:
            yield self.url(name)
        finally:
            _drop(self._admin, name)

    def close(self) -> None:
        """Drop the template (at the end of the session)."""
        try:
            if self._template is not None:
                _drop(self._admin, self._template)
        finally:
            self._admin.dispose()


class SqliteTemplate:
    """A SQLite file migrated to head, copied (one file copy) for each test that needs one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        database = Database(f"sqlite:///{path}")
        try:
            database.upgrade()
        finally:
            database.dispose()
        # The engine runs in WAL mode: closing its last connection checkpoints the log into
        # the main file and removes the log, so the file alone is the whole database.
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        assert not Path(f"{path}-wal").exists(), "the template's write-ahead log outlived it"

    def copy_to(self, path: Path) -> str:
        """Copy the migrated file to `path`; its SQLAlchemy URL."""
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, path)
        return f"sqlite:///{path}"


def fresh_pg_database(base_url: str) -> Iterator[str]:
    """A new, empty database next to the one in base_url (for the benchmarks): yields its URL,
    drops it afterwards."""
    server = PgServer(base_url)
    try:
        yield from server.empty()
    finally:
        server.close()
