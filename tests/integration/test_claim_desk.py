"""The claim desk (what the API and the CLI claim through), on SQLite and PostgreSQL: each claim
is a whole transaction; on PostgreSQL it is one statement in autocommit.  Claim order, leases,
refusals and the lease sweep behave as `ReviewService.claim_many` does; 16 desk claimers on
PostgreSQL never share an item; a pooled connection that died is replaced without the caller
seeing it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from review import ClaimDesk, audit
from review.claims.function import SIGNATURE
from review.db import Database
from review.errors import (
    InvalidTransition,
    NotEntitled,
    NothingToClaim,
    ReviewError,
    UnknownReviewer,
)
from review.schema import AuditEvent, ReviewItem
from review.service import MAX_CLAIM_BATCH, ReviewService
from review.states import ItemStatus
from tests.review_support import FakeClock, make_config, record_many


def item_rows(db: Database) -> dict[int, tuple[str, str | None]]:
    with db.transaction() as s:
        return {r.id: (r.status, r.claimed_by) for r in s.execute(
            select(ReviewItem.id, ReviewItem.status, ReviewItem.claimed_by))}


@pytest.fixture
def desk(seeded: Database, svc: ReviewService) -> ClaimDesk:
    return ClaimDesk(seeded, svc)


def test_desk_claims_in_claim_order_and_commits(
    desk: ClaimDesk, seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    low = record_many(svc, seeded, ["a", "b"], priority=100)
    high = record_many(svc, seeded, ["c"], priority=130)
    views = desk.claim_many(reviewer_id="alice", queue="adult", limit=2)
    assert [v.id for v in views] == [high[0], low[0]]
    assert {(v.status, v.claimed_by) for v in views} == {("claimed", "alice")}
    assert {v.lease_expires_at for v in views} == {clock() + svc.config.lease}
    # committed: another connection sees the leases and one audit event per item
    rows = item_rows(seeded)
    assert rows[high[0]] == rows[low[0]] == ("claimed", "alice")
    assert rows[low[1]] == ("pending", None)
    with seeded.transaction() as s:
        claimed = [int(e.subject_id) for e in s.execute(
            select(AuditEvent).where(AuditEvent.event == "item.claim")).scalars()]
        assert sorted(claimed) == sorted([high[0], low[0]])
        assert audit.verify(s).ok
    one = desk.claim(reviewer_id="bob")
    assert one.id == low[1] and one.claimed_by == "bob"
    with pytest.raises(NothingToClaim):
        desk.claim(reviewer_id="bob", queue="adult")


def test_desk_refusals_carry_their_codes(
    desk: ClaimDesk, seeded: Database, svc: ReviewService
) -> None:
    (item,) = record_many(svc, seeded, ["a"])
    with pytest.raises(UnknownReviewer) as unknown:
        desk.claim(reviewer_id="nobody")
    assert unknown.value.code == "review.unknown_reviewer"
    with pytest.raises(NotEntitled) as not_entitled:
        desk.claim(reviewer_id="alice", queue="medical")
    assert not_entitled.value.code == "review.not_entitled"
    for bad in (0, MAX_CLAIM_BATCH + 1):
        with pytest.raises(ReviewError, match="a claim takes 1 to"):
            desk.claim_many(reviewer_id="alice", limit=bad)
    desk.claim(reviewer_id="alice", item_id=item)
    with pytest.raises(InvalidTransition) as taken:  # a named item someone else holds
        desk.claim(reviewer_id="bob", item_id=item)
    assert taken.value.code == "review.invalid_transition"
    assert item_rows(seeded)[item] == ("claimed", "alice")


def test_desk_returns_expired_leases_and_a_refusal_does_not_undo_that(
    desk: ClaimDesk, seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    (item,) = record_many(svc, seeded, ["a"])
    desk.claim(reviewer_id="alice")
    clock.advance(seconds=svc.config.lease.total_seconds() + 1)
    # the sweep is a transaction of its own: the refused claim leaves the item returned
    with pytest.raises(UnknownReviewer):
        desk.claim(reviewer_id="nobody")
    assert item_rows(seeded)[item] == ("pending", None)
    view = desk.claim(reviewer_id="bob")
    assert view.id == item and view.claimed_by == "bob"
    with seeded.transaction() as s:
        events = [e.event for e in s.execute(
            select(AuditEvent).where(AuditEvent.subject_id == str(item))
            .order_by(AuditEvent.at, AuditEvent.chain, AuditEvent.seq)).scalars()]
        assert audit.verify(s).ok
    assert events[-3:] == ["item.claim", "item.release_first", "item.claim"]


def test_desk_sweeps_before_saying_there_is_nothing(
    desk: ClaimDesk, seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    (item,) = record_many(svc, seeded, ["a"])
    desk.claim(reviewer_id="alice")
    with pytest.raises(NothingToClaim):
        desk.claim(reviewer_id="bob")
    # just past the lease but inside the sweep interval: the desk sweeps because it found none
    clock.advance(seconds=svc.config.lease.total_seconds() + 0.001)
    svc.claims.sweeper.mark(clock())  # a routine sweep has just run and found nothing
    assert desk.claim(reviewer_id="bob").id == item


# ---- PostgreSQL: one statement per claim, concurrency, a dead connection ----------------------


@pytest.fixture
def pg_desk(pg_url: str) -> Iterator[tuple[Database, ReviewService, ClaimDesk]]:
    db = Database(pg_url, pool_size=4)
    db.upgrade()
    svc = ReviewService(make_config(), clock=FakeClock())
    with db.transaction() as s:
        for i in range(16):
            svc.add_reviewer(s, reviewer_id=f"r{i:02d}", queues=["adult"])
    yield db, svc, ClaimDesk(db, svc)
    db.dispose()


@pytest.mark.postgres
def test_a_desk_claim_is_one_round_trip_on_postgresql(
    pg_desk: tuple[Database, ReviewService, ClaimDesk], tmp_path: Path,
) -> None:
    """libpq's own trace of the wire: the claim is one exchange (one Sync from the client),
    no BEGIN or COMMIT, and the server is idle, not in a transaction, when it answers."""
    db, svc, desk = pg_desk
    record_many(svc, db, ["a", "b", "c"])
    desk.claim(reviewer_id="r00")  # the first claim sweeps (in its own transaction)
    with db.autocommit() as conn:  # the pool's one connection: the next claim gets it
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
    trace = tmp_path / "wire.trace"
    with trace.open("w") as f:
        raw.pgconn.trace(f.fileno())
        raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            views = desk.claim_many(reviewer_id="r01", limit=2)
        finally:
            raw.pgconn.untrace()
    assert len(views) == 2
    lines = [line.split("\t") for line in trace.read_text().splitlines()]
    sent = [m[2] for m in lines if m[0] == "F"]
    # the extended protocol's one exchange (Parse until psycopg prepares the statement)
    assert sent[-4:] == ["Bind", "Describe", "Execute", "Sync"] and set(sent[:-4]) <= {"Parse"}
    received = [m[2:] for m in lines if m[0] == "B"]
    assert received[-1] == ["ReadyForQuery", " I"]  # idle, not inside a transaction
    assert "BEGIN" not in trace.read_text() and "COMMIT" not in trace.read_text()


@pytest.mark.postgres
def test_sixteen_desk_claimers_never_share_an_item(
    pg_desk: tuple[Database, ReviewService, ClaimDesk],
) -> None:
    db, svc, desk = pg_desk
    n = 240
    ids = record_many(svc, db, [f"x{i}" for i in range(n)])
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def claimer(who: str) -> None:
        mine: list[int] = []
        start.wait()
        try:
            while True:
                mine.extend(v.id for v in desk.claim_many(reviewer_id=who, limit=1 + len(mine) % 3))
        except NothingToClaim:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        got[who] = mine

    threads = [threading.Thread(target=claimer, args=(f"r{i:02d}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    claimed = [i for mine in got.values() for i in mine]
    assert Counter(claimed).most_common(1)[0][1] == 1  # no item claimed twice
    assert sorted(claimed) == sorted(ids)  # none lost
    assert sum(1 for mine in got.values() if mine) > 1  # the claimers really overlapped
    with db.transaction() as s:
        by_who = dict(s.execute(select(ReviewItem.claimed_by, func.count())
                                .group_by(ReviewItem.claimed_by)).all())
        assert by_who == {w: len(m) for w, m in got.items() if m}
        assert s.execute(select(func.count()).select_from(AuditEvent)
                         .where(AuditEvent.event == "item.claim")).scalar_one() == n
        assert audit.verify(s).ok


@pytest.mark.postgres
def test_a_pooled_connection_that_died_is_replaced(
    pg_desk: tuple[Database, ReviewService, ClaimDesk],
) -> None:
    db, svc, desk = pg_desk
    first, second = record_many(svc, db, ["a", "b"])
    assert desk.claim(reviewer_id="r00").id == first
    with db.autocommit() as conn:  # the pooled connection the next claim will get
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with db.transaction() as s:
        assert s.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    view = desk.claim(reviewer_id="r01")
    assert view.id == second and view.claimed_by == "r01"
    assert item_rows(db)[second] == (ItemStatus.CLAIMED, "r01")


@pytest.mark.postgres
def test_database_errors_come_out_as_sqlalchemy_errors_and_lose_nothing(
    pg_desk: tuple[Database, ReviewService, ClaimDesk], pg_url: str,
) -> None:
    """The desk talks to the driver directly; its errors must still be SQLAlchemy's (the API
    maps OperationalError to 503 `db.unavailable`), and a failed claim leases nothing."""
    db, svc, desk = pg_desk
    (item,) = record_many(svc, db, ["a"])
    with db.transaction() as s:
        s.execute(text(f"ALTER FUNCTION {SIGNATURE} RENAME TO lookfirst_claim_away"))
    try:
        with pytest.raises(ProgrammingError, match="lookfirst_claim"):
            desk.claim(reviewer_id="r00")
    finally:
        with db.transaction() as s:
            s.execute(text(f"ALTER FUNCTION lookfirst_claim_away"
                           f"{SIGNATURE.removeprefix('lookfirst_claim')} "
                           "RENAME TO lookfirst_claim"))
    assert item_rows(db)[item] == ("pending", None)
    down = Database(pg_url.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(OperationalError):
            ClaimDesk(down, ReviewService(make_config(), clock=FakeClock())).claim(
                reviewer_id="r00")
    finally:
        down.dispose()
    assert desk.claim(reviewer_id="r00").id == item
