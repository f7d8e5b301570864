"""Test databases: new PostgreSQL databases next to the test server's URL, and the templates
(one per test session, migrated once) that each test's SQLite file or PostgreSQL database is
copied from instead of being migrated again."""

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


def fresh_pg_database(base_url: str, *, template: str | None = None) -> Iterator[str]:
    """Create a new database next to the one in base_url, empty or a copy of `template`; yield
    its URL and drop it afterwards."""
    url = make_url(base_url)
    name = _unique("lookfirst_t")
    admin = _admin(base_url)
    try:
        _create(admin, name, template)
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            _drop(admin, name)
    finally:
        admin.dispose()


class PgTemplate:
    """A PostgreSQL database migrated to head, which test databases are copied from
    (`CREATE DATABASE … TEMPLATE`): one migration per session instead of one per test.

    PostgreSQL refuses to copy a database that has a session open, so nothing may connect to
    it once it is built: the engine that migrated it is disposed, and the server is told to
    allow no connections to it at all."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.name = _unique("lookfirst_tpl")
        admin = _admin(base_url)
        try:
            _create(admin, self.name)
            try:
                database = Database(make_url(base_url).set(database=self.name)
                                    .render_as_string(hide_password=False))
                try:
                    database.upgrade()
                finally:
                    database.dispose()
                with admin.connect() as c:
                    c.execute(text(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false'))
            except BaseException:
                _drop(admin, self.name)
                raise
        finally:
            admin.dispose()

    def copy(self) -> Iterator[str]:
        """A fixture body: a new database at head (the template's copy), dropped afterwards."""
        yield from fresh_pg_database(self.base_url, template=self.name)

    def drop(self) -> None:
        admin = _admin(self.base_url)
        try:
            _drop(admin, self.name)
        finally:
            admin.dispose()


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
