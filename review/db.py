"""Engines, sessions and migrations.  SQLite gets a correct single-writer path; PostgreSQL
gets row locks (`FOR UPDATE SKIP LOCKED`).  Repositories never commit: `transaction()` does."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

# alembic (with mako and pygments behind it) is imported only where migrations run: a command
# that finds the schema current, as every batch job and server start does, never needs it

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
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations (the same ones on SQLite and PostgreSQL).  A database already at
    the head is left as it is without loading alembic (a third of a second of a command's
    start on two cores)."""
    if revision == "head":
        head = head_revision()
        if head is not None and _stamped(engine) == head:
            return
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


_REVISION = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.M)


def head_revision() -> str | None:
    """The head of the migrations, read from their files: the one revision no other names as
    its `down_revision`.  None when the files say anything this reading does not follow
    (several heads, a merge, a computed value): the caller then asks alembic."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found: dict[str, str] = {m.group(1): m.group(2) for m in
                                 _REVISION.finditer(path.read_text(encoding="utf-8"))}
        rev, down = found.get("revision"), found.get("down_revision")
        if rev is None or down is None:
            return None
        rev_q, down_q = re.fullmatch(r"'([^']+)'", rev), re.fullmatch(r"'([^']+)'|None", down)
        if rev_q is None or down_q is None:
            return None
        revisions.add(rev_q.group(1))
        if down_q.group(1) is not None:
            downs.add(down_q.group(1))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _stamped(engine: Engine) -> str | None:
    """The revision alembic recorded in the database; None when it has none (a new one)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except Exception:  # no table yet: a new database, which alembic sets up
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
