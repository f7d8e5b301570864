"""The hash-chained audit log on real databases: a workflow verifies; an edited, deleted or
reordered row (changed behind the service's back, with raw SQL) does not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from review import audit
from review.db import Database
from review.schema import AuditEvent
from review.service import ReviewService
from tests.review_support import FakeClock, record


@pytest.fixture
def chained(seeded: Database, svc: ReviewService, clock: FakeClock) -> Database:
    """A small workflow: a hold decided by a person, its account action run after notice."""
    with seeded.transaction() as s:
        r = record(svc, s, 1, outcome="hold")
    with seeded.transaction() as s:
        view = svc.claim(s, reviewer_id="alice")
        svc.decide(s, item_id=view.id, reviewer_id="alice", verdict="violating",
                   categories=["cat.high"])
    clock.advance(hours=73)
    with seeded.transaction() as s:
        assert svc.execute_due(s)
        svc.appeal(s, decision_id=r.decision_id, statement="please look again")
    return seeded


def verify(db: Database) -> audit.ChainReport:
    with db.transaction() as s:
        return audit.verify(s)


def sql(db: Database, statement: str, **params: Any) -> list[Any]:
    with db.transaction() as s:
        result = s.execute(text(statement), params)
        return list(result.all()) if statement.lstrip().upper().startswith("SELECT") else []


def n_events(db: Database) -> int:
    return int(sql(db, "SELECT count(*) FROM audit_event")[0][0])


def test_a_workflow_verifies(chained: Database) -> None:
    report = verify(chained)
    assert report.ok and report.problem is None
    assert report.events == n_events(chained) > 20
    # one writer at a time here: everything hangs from chain 1, the other chains are empty
    assert report.chains == 16
    assert sql(chained, "SELECT DISTINCT chain FROM audit_event") == [(1,)]
    head = sql(chained, "SELECT seq, hash FROM audit_head WHERE id = 1")[0]
    last = sql(chained, "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")[0]
    assert tuple(head) == tuple(last)
    kinds = {r[0] for r in sql(chained, "SELECT DISTINCT event FROM audit_event")}
    assert {"decision.recorded", "item.claim", "verdict.recorded", "action.approve",
            "action.execute", "appeal.filed"} <= kinds


def test_verify_reads_in_batches(chained: Database) -> None:
    with chained.transaction() as s:
        assert audit.verify(s, batch=3).ok


def test_an_edited_row_breaks_the_chain_and_undoing_the_edit_mends_it(
    chained: Database,
) -> None:
    seq, data = sql(chained, "SELECT seq, data FROM audit_event "
                             "WHERE event = 'verdict.recorded'")[0]
    data = data if isinstance(data, dict) else json.loads(data)
    assert data["verdict"] == "violating"
    original = sql(chained, "SELECT actor, event, subject_id, data FROM audit_event "
                            "WHERE seq = :s", s=seq)[0]
    edits = {
        "actor": "mallory",
        "event": "item.nothing_happened",
        "subject_id": "999",
        "data": json.dumps({**data, "verdict": "benign"}),  # the verdict rewritten
    }
    for column, value in edits.items():
        sql(chained, f"UPDATE audit_event SET {column} = :v WHERE seq = :s", v=value, s=seq)
        report = verify(chained)
        assert (report.ok, report.at_seq, report.problem) == (
            False, seq, "event content does not match its hash"), column
        before = original._mapping[column]
        if column == "data" and not isinstance(before, str):
            before = json.dumps(before)
        sql(chained, f"UPDATE audit_event SET {column} = :v WHERE seq = :s", v=before, s=seq)
        assert verify(chained).ok, column  # the hash covers exactly the event, nothing else


def test_an_edit_that_rehashes_its_row_breaks_the_next_link(chained: Database) -> None:
    """A forger who recomputes the edited row's hash still breaks the following row."""
    seq = int(sql(chained, "SELECT min(seq) FROM audit_event WHERE event = 'item.claim'")[0][0])
    with chained.transaction() as s:
        row = s.get(AuditEvent, (1, seq))
        assert row is not None
        forged = audit.event_hash(prev_hash=row.prev_hash, seq=row.seq, at=row.at,
                                  actor="mallory", event=row.event,
                                  subject_type=row.subject_type, subject_id=row.subject_id,
                                  data=row.data)
    sql(chained, "UPDATE audit_event SET actor = 'mallory', hash = :h WHERE seq = :s",
        h=forged, s=seq)
    report = verify(chained)
    assert (report.ok, report.at_seq) == (False, seq + 1)
    assert report.problem == "link to the previous event does not match"


def test_a_deleted_middle_row_breaks_the_chain(chained: Database) -> None:
    middle = n_events(chained) // 2
    sql(chained, "DELETE FROM audit_event WHERE seq = :s", s=middle)
    report = verify(chained)
    assert (report.ok, report.at_seq) == (False, middle + 1)
    assert report.problem is not None and "sequence gap" in report.problem


def test_a_deleted_middle_row_with_renumbering_still_breaks_the_links(chained: Database) -> None:
    total = n_events(chained)
    middle = total // 2
    sql(chained, "DELETE FROM audit_event WHERE seq = :s", s=middle)
    for seq in range(middle + 1, total + 1):  # close the gap, one row at a time (PK order)
        sql(chained, "UPDATE audit_event SET seq = seq - 1 WHERE seq = :s", s=seq)
    report = verify(chained)
    assert (report.ok, report.at_seq) == (False, middle)
    assert report.problem == "link to the previous event does not match"


def test_a_deleted_tail_is_caught_by_the_head(chained: Database) -> None:
    total = n_events(chained)
    sql(chained, "DELETE FROM audit_event WHERE seq >= :s", s=total - 1)
    report = verify(chained)
    assert not report.ok
    assert report.problem == "the chain's head does not match its last event"
    assert report.events == total - 2


def test_a_deleted_tail_with_a_rewound_head_is_still_caught(chained: Database) -> None:
    """Rewinding the head's seq alone is not enough: its hash names the lost last event."""
    total = n_events(chained)
    sql(chained, "DELETE FROM audit_event WHERE seq = :s", s=total)
    sql(chained, "UPDATE audit_head SET seq = :s WHERE id = 1", s=total - 1)
    report = verify(chained)
    assert (report.ok, report.problem) == (False,
                                           "the chain's head does not match its last event")


def test_a_reordered_row_breaks_the_chain(chained: Database) -> None:
    a, b = 5, 9
    # swap the two rows' positions through a free value: seq is the primary key
    sql(chained, "UPDATE audit_event SET seq = -1 WHERE seq = :a", a=a)
    sql(chained, "UPDATE audit_event SET seq = :a WHERE seq = :b", a=a, b=b)
    sql(chained, "UPDATE audit_event SET seq = :b WHERE seq = -1", b=b)
    assert n_events(chained) == int(sql(chained, "SELECT max(seq) FROM audit_event")[0][0])
    report = verify(chained)
    assert (report.ok, report.at_seq) == (False, a)


def test_the_chain_keeps_verifying_as_it_grows(
    chained: Database, svc: ReviewService, clock: FakeClock
) -> None:
    before = verify(chained).events
    with chained.transaction() as s:
        view = svc.claim(s, reviewer_id="bob", queue="appeals")
        svc.decide(s, item_id=view.id, reviewer_id="bob", verdict="benign")
    with chained.transaction() as s:
        svc.execute_due(s)
    after = verify(chained)
    assert after.ok and after.events > before


def test_a_row_hung_past_the_head_is_caught(chained: Database) -> None:
    """A forged event appended with a correct hash and link, but without moving the head."""
    seq, prev = sql(chained, "SELECT seq, hash FROM audit_head WHERE id = 1")[0]
    with chained.transaction() as s:
        last = s.get(AuditEvent, (1, seq))
        assert last is not None
        at = last.at
    forged = audit.event_hash(prev_hash=prev, seq=seq + 1, at=at, actor="mallory",
                              event="item.claim", subject_type="review_item", subject_id="1",
                              data={})
    sql(chained, "INSERT INTO audit_event (chain, seq, at, actor, event, subject_type, "
                 "subject_id, data, prev_hash, hash) VALUES (1, :q, :at, 'mallory', "
                 "'item.claim', 'review_item', '1', '{}', :p, :h)",
        q=seq + 1, at=at.replace(tzinfo=None), p=prev, h=forged)
    report = verify(chained)
    assert (report.ok, report.at_chain, report.at_seq, report.problem) == (
        False, 1, seq + 1, "events past the chain's head")


@pytest.mark.postgres
def test_a_second_writer_appends_to_another_chain_and_each_chain_is_checked(
    pg_url: str, clock: FakeClock
) -> None:
    """While one transaction holds chain 1's head, another links its events to chain 2 instead
    of waiting; both chains verify, and tampering in chain 2 is caught in chain 2."""
    from review.db import Database as Db
    from review.service import ReviewService as Svc
    from tests.review_support import make_config, seed_reviewers

    db = Db(pg_url)
    db.upgrade()
    svc = Svc(make_config(), clock=clock)
    with db.transaction() as s:
        seed_reviewers(svc, s)
    try:
        with db.engine.connect() as holder:
            holder.exec_driver_sql("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE")
            with db.transaction() as s:  # would wait forever on one chain; takes chain 2
                record(svc, s, 1, outcome="hold")
            holder.rollback()
        with db.transaction() as s:
            record(svc, s, 2, outcome="hold")  # chain 1 is free again
        chains = dict(sql(db, "SELECT chain, count(*) FROM audit_event "
                              "WHERE event = 'decision.recorded' GROUP BY chain"))
        assert chains == {1: 1, 2: 1}
        report = verify(db)
        assert report.ok and report.chains == 16, report
        seq = sql(db, "SELECT seq FROM audit_event WHERE chain = 2 "
                      "AND event = 'decision.recorded'")[0][0]
        sql(db, "UPDATE audit_event SET actor = 'mallory' WHERE chain = 2 AND seq = :s", s=seq)
        report = verify(db)
        assert (report.ok, report.at_chain, report.at_seq) == (False, 2, seq)
        sql(db, "UPDATE audit_event SET actor = 'system:lookfirst' WHERE chain = 2 "
                "AND seq = :s", s=seq)
        assert verify(db).ok
        sql(db, "DELETE FROM audit_event WHERE chain = 2 AND seq = "
                "(SELECT max(seq) FROM audit_event WHERE chain = 2)")
        report = verify(db)
        assert (report.ok, report.at_chain, report.problem) == (
            False, 2, "the chain's head does not match its last event")
    finally:
        db.dispose()
