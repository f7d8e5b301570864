"""`record_many` writes exactly what `record` writes one upload at a time: the same rows in
every table, the same outbox messages and the same audit events (the same hash chain), on
SQLite and PostgreSQL.  Both paths run on the same frozen clock and the same sequence of
generated ids, so every column can be compared, hashes included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from review import audit
from review.db import Database
from review.service import NewUpload, ReviewService, Routing
from tests.databases import fresh_pg_database, require_pg
from tests.review_support import FakeClock, make_config, routing, upload

TABLES = ("content", "upload", "decision", "review_item", "action", "outbox", "audit_event",
          "audit_head")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    """Two fresh, migrated databases of one backend."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path / 'one.db'}",
                                    f"sqlite:///{tmp_path / 'many.db'}"])
        made = [Database(next(urls)), Database(next(urls))]
        for d in made:
            d.upgrade()
        yield made[0], made[1]
        for d in made:
            d.dispose()
        return
    base = require_pg()
    first, second = fresh_pg_database(base), fresh_pg_database(base)
    made = [Database(next(first)), Database(next(second))]
    try:
        for d in made:
            d.upgrade()
        yield made[0], made[1]
    finally:
        for d in made:
            d.dispose()
        for gen in (first, second):
            next(gen, None)  # drops the database


def deterministic_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = iter(range(1, 1_000_000))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))


def batch() -> list[tuple[NewUpload, Routing]]:
    """Every path through intake: allow, a QA sample, review with proposals, an automated
    hold, a two-person severe item with an action that waits for the appeal window, two
    uploads of one image, an upload named twice, and an upload decided before the batch."""
    return [
        (upload(1), routing("allow", None)),
        (upload(2), routing("allow", "qa", qa=True)),
        (upload(3), routing("review", "adult", proposed=("remove_content", "suspend"))),
        (upload(4), routing("hold", "adult", proposed=("remove_content",))),
        (upload(5, account="acct-2"), routing("review", "severe", severity="critical",
                                               reviewers_required=2,
                                               proposed=("remove_content", "terminate"))),
        (upload(0), routing("review", "adult")),  # decided before the batch
        (NewUpload(account_id="acct-3", external_id="again-4", source="test", context={},
                   sha256=upload(4).sha256, mime="image/jpeg", width=10, height=10,
                   size_bytes=100), routing("hold", "medical", proposed=())),
        (upload(3), routing("review", "adult")),  # named twice: the first decision holds
        (upload(6), routing("review", "adult", qa=True)),
    ]


def dump(db: Database) -> dict[str, list[dict[str, Any]]]:
    out = {}
    schema = inspect(db.engine)  # before the transaction: SQLite has one writer at a time
    keys = {t: schema.get_pk_constraint(t)["constrained_columns"] for t in TABLES}
    with db.transaction() as s:
        for table in TABLES:
            rows = s.execute(text(f"SELECT * FROM {table} ORDER BY {', '.join(keys[table])}"))
            out[table] = [dict(r._mapping) for r in rows]
    return out


def test_record_many_writes_what_record_writes(two_dbs: tuple[Database, Database],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    one_db, many_db = two_dbs
    svc = ReviewService(make_config(), clock=FakeClock())
    entries = batch()
    before = (upload(0), routing("review", "adult"))

    deterministic_ids(monkeypatch)
    with one_db.transaction() as s:
        svc.record(s, *before)
    with one_db.transaction() as s:
        one_by_one = [svc.record(s, u, r) for u, r in entries]

    deterministic_ids(monkeypatch)
    with many_db.transaction() as s:
        svc.record(s, *before)
    with many_db.transaction() as s:
        many = svc.record_many(s, entries)

    assert many == one_by_one
    assert [r.created for r in many] == [True] * 5 + [False, True, False, True]
    assert many[7].decision_id == many[2].decision_id  # the repeat got the first's decision
    left, right = dump(one_db), dump(many_db)
    for table in TABLES:
        assert right[table] == left[table], table
    # the comparison is not vacuous: every kind of row was written
    assert {r["kind"] for r in left["review_item"]} == {"initial", "qa"}
    assert {r["status"] for r in left["action"]} == {"proposed", "executed"}
    assert any(r["not_before"] is not None for r in left["action"])
    assert {r["topic"] for r in left["outbox"]} == {"decision", "action"}
    assert len(left["content"]) == 7 and len(left["audit_event"]) > 20
    with many_db.transaction() as s:
        assert audit.verify(s).ok


def test_find_uploads_answers_like_find_upload(two_dbs: tuple[Database, Database]) -> None:
    db, _ = two_dbs
    svc = ReviewService(make_config(), clock=FakeClock())
    with db.transaction() as s:
        svc.record_many(s, batch())
    keys = [(u.account_id, u.external_id) for u, _ in batch()] + [("acct-9", "never")]
    with db.transaction() as s:
        found = svc.find_uploads(s, keys)
        one = {k: svc.find_upload(s, account_id=k[0], external_id=k[1]) for k in keys}
    assert found == {k: v for k, v in one.items() if v is not None}
    assert ("acct-9", "never") not in found and len(found) == 8


def test_a_race_ends_in_the_unique_constraint(two_dbs: tuple[Database, Database]) -> None:
    """Another writer decided an upload of the batch after the batch looked: the batch
    fails whole (its caller retries and finds the winner's decision), nothing half-written."""
    db, _ = two_dbs
    svc = ReviewService(make_config(), clock=FakeClock())
    looked = svc.intake.find_uploads

    def stale(s: Any, keys: Any) -> dict[Any, Any]:
        found = looked(s, keys)
        found.pop(("acct-1", "up-3"), None)  # as if it had been decided a moment later
        return found

    with db.transaction() as s:
        svc.record(s, upload(3), routing())
    svc.intake.find_uploads = stale  # type: ignore[method-assign]
    with pytest.raises(IntegrityError), db.transaction() as s:
        svc.record_many(s, [(upload(7), routing()), (upload(3), routing())])
    with db.transaction() as s:
        assert svc.find_upload(s, account_id="acct-1", external_id="up-7") is None
        assert audit.verify(s).ok
