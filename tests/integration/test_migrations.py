"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL,
and the database itself holds the invariants' constraints."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from review.db import Database, current_revision
from review.schema import Base

# the database fixtures start empty here: these tests are about building the schema, so they
# must not get a copy of the session's template
pytestmark = pytest.mark.migrations


def test_migrations_match_the_declared_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], diff


def test_upgrade_is_idempotent_and_at_head(db: Database) -> None:
    head = current_revision(db.engine)
    db.upgrade()
    assert current_revision(db.engine) == head is not None


def test_invariant_constraints_exist_in_the_database(db: Database) -> None:
    names = {c["name"] for c in inspect(db.engine).get_check_constraints("action")}
    for required in ("ck_action_human_approved", "ck_action_two_people", "ck_action_irreversible",
                     "ck_action_erasure_waits"):
        assert required in names
    item_checks = {c["name"] for c in inspect(db.engine).get_check_constraints("review_item")}
    assert "ck_review_item_lease_iff_claimed" in item_checks


def test_a_single_chain_log_survives_the_move_to_parallel_chains(db_url: str) -> None:
    """Events written before 0007 (one chain) become chain 1 unchanged and still verify; new
    events append to them; going back to 0006 and forward again keeps them."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import text

    from review import audit
    from review.db import alembic_config

    database = Database(db_url)
    try:
        database.upgrade_to("0006")
        at = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
        prev = audit.GENESIS
        with database.engine.begin() as c:
            for seq in range(1, 6):
                h = audit.event_hash(prev_hash=prev, seq=seq, at=at, actor="old", event="e",
                                     subject_type="t", subject_id=str(seq), data={"n": seq})
                c.execute(text(
                    "INSERT INTO audit_event (seq, at, actor, event, subject_type, subject_id, "
                    "data, prev_hash, hash) VALUES (:s, :at, 'old', 'e', 't', :i, :d, :p, :h)"),
                    {"s": seq, "at": at.replace(tzinfo=None), "i": str(seq),
                     "d": f'{{"n": {seq}}}', "p": prev, "h": h})
                prev = h
            c.execute(text("UPDATE audit_head SET seq = 5, hash = :h"), {"h": prev})
        database.upgrade()
        with database.transaction() as s:
            report = audit.verify(s)
            assert (report.ok, report.events, report.chains) == (True, 5, 16), report
            audit.append(s, at=at, actor="new", event="e", subject_type="t", subject_id="6")
        with database.transaction() as s:
            assert s.execute(text("SELECT chain, seq FROM audit_event WHERE actor = 'new'")
                             ).one() == (1, 6)
            assert audit.verify(s).ok
        command.downgrade(alembic_config(database.engine), "0006")
        with database.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1
        database.upgrade()
        with database.transaction() as s:
            report = audit.verify(s)
        assert (report.ok, report.events) == (True, 6), report
    finally:
        database.dispose()


def test_sha256_bank_entries_survive_0012_and_its_downgrade(db_url: str) -> None:
    """0012 moves the sha256 entries into bank_hash (global, active, numbered) and they keep
    matching; a PDQ entry added after it is dropped by the downgrade, the sha256 ones return."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import text

    from review import add_to_bank, bank_current_seq, bank_lookup
    from review.db import alembic_config

    database = Database(db_url)
    at = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    try:
        database.upgrade_to("0011")
        with database.engine.begin() as c:
            for bank, digit in (("violating", "a"), ("cleared_benign", "b")):
                c.execute(text(
                    "INSERT INTO bank_entry (bank, sha256, source, note, created_at) "
                    "VALUES (:b, :s, 'old list', 'n', :at)"),
                    {"b": bank, "s": digit * 64, "at": at.replace(tzinfo=None)})
        database.upgrade()
        with database.transaction() as s:
            assert bank_lookup(s, "a" * 64, at=at) == "violating"
            assert bank_lookup(s, "b" * 64, at=at) == "cleared_benign"
            assert bank_current_seq(s) == 2
            assert add_to_bank(s, bank="violating", kind="pdq", value="c" * 64, source="x",
                               actor="op", at=at) is not None
            assert bank_current_seq(s) == 3
        command.downgrade(alembic_config(database.engine), "0011")
        with database.engine.connect() as c:
            rows = c.execute(text("SELECT bank, sha256, source FROM bank_entry ORDER BY bank")
                             ).all()
            assert [tuple(r) for r in rows] == [("cleared_benign", "b" * 64, "old list"),
                                                ("violating", "a" * 64, "old list")]
        database.upgrade()
        with database.transaction() as s:
            assert bank_lookup(s, "a" * 64, at=at) == "violating"
    finally:
        database.dispose()
