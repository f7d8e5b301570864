"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL,
and the database itself holds the invariants' constraints."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from review.db import Database, current_revision
from review.schema import Base


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
