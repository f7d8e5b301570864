"""Engines, sessions and migrations.  SQLite gets a correct single-writer path; PostgreSQL
gets row locks (`FOR UPDATE SKIP LOCKED`).  Repositories never commit: `transaction()` does."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_single_writer(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_single_writer(engine: Engine) -> None:
    """Every transaction takes the write lock up front (BEGIN IMMEDIATE).

    pysqlite's default deferred BEGIN lets two writers both read and then deadlock on upgrade;
    taking the lock first makes SQLite a correct single-writer queue: a claim is read-then-write
    and must not interleave.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA busy_timeout = 30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self._pool_size = pool_size
        self._autocommit_engine: Engine | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement is its own transaction, for work that is one
        statement (PostgreSQL's claim function): one round trip instead of BEGIN, statement,
        COMMIT.  Its pool does not ping on checkout, which would double the round trips; a
        dead connection raises `DBAPIError` with `connection_invalidated` set, and the caller
        decides whether to try again."""
        if is_sqlite(self.engine):
            raise RuntimeError("SQLite has one writer: use transaction()")
        with self._lock:
            if self._autocommit_engine is None:
                self._autocommit_engine = create_engine(
                    self.url, isolation_level="AUTOCOMMIT", pool_size=self._pool_size,
                    max_overflow=self._pool_size, pool_pre_ping=False)
            engine = self._autocommit_engine
        with engine.connect() as conn:
            yield conn

    def upgrade(self) -> None:
        upgrade(self.engine)

    def upgrade_to(self, revision: str) -> None:
        upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations (the same ones on SQLite and PostgreSQL)."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
