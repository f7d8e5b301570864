"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL,
and the database itself holds the invariants' constraints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from review.db import Database, current_revision
from review.schema import Base

# the database fixtures start empty here: these tests are about building the schema, so they
# must not get a copy of the session's template
pytestmark = pytest.mark.migrations
ROOT = Path(__file__).resolve().parents[2]


def test_migrations_match_the_declared_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], diff


def test_upgrade_is_idempotent_and_at_head(db: Database) -> None:
    head = current_revision(db.engine)
    db.upgrade()
    assert current_revision(db.engine) == head is not None


def test_the_head_read_from_the_files_is_alembics() -> None:
    """`upgrade` skips alembic on a current database by reading the head off the migration
    files: that reading must agree with alembic's own."""
    from alembic.script import ScriptDirectory

    from review.db import MIGRATIONS, alembic_config, head_revision

    assert MIGRATIONS.is_dir()
    expected = ScriptDirectory.from_config(alembic_config(None)).get_current_head()  # type: ignore[arg-type]
    assert head_revision() == expected is not None


def test_a_current_database_is_upgraded_without_loading_alembic(
    db: Database, tmp_path: Path
) -> None:
    """A command's start (every batch job, every server) finds the schema current without
    importing alembic; a database behind the head is still migrated (the other tests)."""
    probe = (
        "import sys\n"
        "from review.db import Database\n"
        f"db = Database({db.url!r})\n"
        "db.upgrade()\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False", out.stderr


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


def test_verdicts_from_before_0013_get_a_direct_credential_and_0013_goes_back(
    db_url: str,
) -> None:
    """0013 (issue 16): verdicts written before it count as `direct:<reviewer>`, a credential
    per reviewer, so existing two-person approvals stay lawful under UNIQUE(item_id,
    credential); the downgrade drops the columns and the constraint, and up again works."""
    from alembic import command
    from sqlalchemy import text

    from review.db import alembic_config
    from review.service import ReviewService
    from tests.review_support import ACTIONS, FakeClock, make_config, record, seed_reviewers

    database = Database(db_url)
    try:
        database.upgrade()
        svc = ReviewService(make_config(), clock=FakeClock())
        with database.transaction() as s:
            seed_reviewers(svc, s)
            item = record(svc, s, 1, queue="severe", severity="critical",
                          reviewers_required=2, proposed=ACTIONS["critical"]).item_id
            assert item is not None
            for who, door in (("sam", "key:1"), ("sue", "oidc:abc")):
                svc.claim(s, reviewer_id=who, item_id=item)
                svc.decide(s, item_id=item, reviewer_id=who, verdict="violating",
                           categories=("cat.critical",), credential=door, delegate=True)
        command.downgrade(alembic_config(database.engine), "0011")
        columns = {c["name"] for c in inspect(database.engine).get_columns("verdict")}
        assert "credential" not in columns and "via_delegate" not in columns
        assert "reviewer_id" not in {c["name"]
                                     for c in inspect(database.engine).get_columns("api_key")}
        database.upgrade()
        with database.engine.connect() as c:
            rows = c.execute(text("SELECT reviewer_id, credential, via_delegate FROM verdict "
                                  "ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("sam", "direct:sam", False),
                                            ("sue", "direct:sue", False)]
        uniques = {i["name"] for i in inspect(database.engine).get_indexes("verdict")
                   if i["unique"]}
        assert "uq_verdict_item_credential" in uniques
    finally:
        database.dispose()


def test_0014_keeps_judged_annotations_across_upgrade_and_downgrade(db: Database) -> None:
    """labelstudio_annotation gains what each judgement read (0014); a row written before it
    survives the upgrade (no digest: never judged again) and the downgrade."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import text

    from review.db import alembic_config

    cfg = alembic_config(db.engine)
    head = current_revision(db.engine)
    command.downgrade(cfg, "0011")
    cols = {c["name"] for c in inspect(db.engine).get_columns("labelstudio_annotation")}
    assert "result_sha256" not in cols
    at, sha = dt.datetime(2026, 12, 1, 8, 0), "c" * 64
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO content (sha256, mime, width, height, size_bytes, "
                       "created_at) VALUES (:c, 'image/png', 1, 1, 1, :at)"), {"at": at, "c": sha})
        c.execute(text("INSERT INTO upload (id, content_sha256, account_id, external_id, "
                       "source, context, received_at) VALUES ('u', :c, 'a', 'x', 'cli', "
                       "'{}', :at)"), {"at": at, "c": sha})
        c.execute(text("INSERT INTO decision (id, upload_id, outcome, model_version, "
                       "policy_version, scores, reasons, queue, created_at) VALUES ('d', 'u', "
                       "'review', 'm', 'p', '{}', '{}', 'adult', :at)"), {"at": at})
        c.execute(text("INSERT INTO review_item (id, decision_id, kind, queue, severity, "
                       "priority, status, reviewers_required, account_id, content_sha256, "
                       "due_at, rank_at, created_at, updated_at) VALUES (1, 'd', 'initial', "
                       "'adult', 'high', 1, 'pending', 1, 'a', :c, :at, :at, :at, :at)"),
                  {"at": at, "c": sha})
        c.execute(text("INSERT INTO labelstudio_annotation (annotation_id, task_id, item_id, "
                       "status, via, created_at) VALUES (7, 70, 1, 'refused', 'poller', :at)"),
                  {"at": at})
    db.upgrade()
    with db.engine.connect() as c:
        row = c.execute(text("SELECT annotation_id, result_sha256, edit_code, edited_at FROM "
                             "labelstudio_annotation")).one()
    assert tuple(row) == (7, None, None, None)
    command.downgrade(cfg, "0011")
    with db.engine.connect() as c:
        assert c.execute(text("SELECT annotation_id FROM labelstudio_annotation")
                         ).scalar_one() == 7
    db.upgrade()
    assert current_revision(db.engine) == head


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


def test_0015_names_rate_buckets_and_keeps_the_keys_ones_both_ways(db_url: str) -> None:
    """0015 keys api_rate_bucket by name: a key's bucket from before it becomes `key:<id>`
    with its level (no fresh burst from the upgrade); the downgrade takes the key buckets
    back to key ids and drops the token buckets, and up again works."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import text

    from review import add_api_key, take_rate_token
    from review.db import alembic_config

    database = Database(db_url)
    try:
        database.upgrade_to("0014")
        with database.transaction() as s:
            key = add_api_key(s, name="k", prefix="abcdefgh", secret_sha256="d" * 64,
                              scopes=["classify"], rate_per_minute=None,
                              now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC)).id
        with database.engine.begin() as c:
            c.execute(text("INSERT INTO api_rate_bucket (key_id, tokens, at) "
                           "VALUES (:k, 0.25, 1000.0)"), {"k": key})
        database.upgrade()
        with database.engine.connect() as c:
            rows = c.execute(text("SELECT bucket, tokens, at FROM api_rate_bucket")).all()
        assert [tuple(r) for r in rows] == [(f"key:{key}", 0.25, 1000.0)]
        with database.transaction() as s:
            # the carried-over level holds: nothing to take at once, a token in 7.5 s
            assert take_rate_token(s, bucket=f"key:{key}", per_second=0.1, capacity=1.0,
                                   now=1000.0) == 7.5
            assert take_rate_token(s, bucket="oidc:r1", per_second=0.1, capacity=1.0,
                                   now=1000.0) == 0.0
        command.downgrade(alembic_config(database.engine), "0014")
        assert "key_id" in {c["name"] for c in inspect(database.engine)
                            .get_columns("api_rate_bucket")}
        with database.engine.connect() as c:
            rows = c.execute(text("SELECT key_id, tokens, at FROM api_rate_bucket")).all()
        assert [tuple(r) for r in rows] == [(key, 0.25, 1000.0)]
        database.upgrade()
        with database.engine.connect() as c:
            assert c.execute(text("SELECT bucket FROM api_rate_bucket")).scalars().all() == [
                f"key:{key}"]
    finally:
        database.dispose()
