"""Claims of several items in one transaction (`claim_many`, a reviewer's tool prefetching) and
claims across several queues, on SQLite and PostgreSQL: every item leased is leased on its own
terms (lease, audit event, exposure cap, two people), in the order a single claim would take."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, text

from review import audit
from review.db import Database
from review.errors import ExposureCapReached, NothingToClaim, ReviewError
from review.schema import AuditEvent
from review.service import MAX_CLAIM_BATCH, ReviewService
from tests.review_support import ACTIONS, FakeClock, make_config, record_many

SEVERE: dict[str, Any] = dict(queue="severe", severity="critical", reviewers_required=2,
                              proposed=ACTIONS["critical"])


def claim_events(db: Database) -> list[tuple[str, int]]:
    with db.transaction() as s:
        return [(e.actor, int(e.subject_id)) for e in s.execute(
            select(AuditEvent).where(AuditEvent.event == "item.claim").order_by(AuditEvent.seq)
        ).scalars()]


def test_a_batch_takes_items_in_claim_order_each_with_its_lease_and_event(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    # priority brings items forward: the order is rank_at (deadline less priority), then id
    low = record_many(svc, seeded, ["a", "b"], priority=100)
    high = record_many(svc, seeded, ["c", "d"], priority=130)
    later = record_many(svc, seeded, ["e"], priority=100)
    with seeded.transaction() as s:
        views = svc.claim_many(s, reviewer_id="alice", queue="adult", limit=4)
    assert [v.id for v in views] == high + low
    assert {(v.status, v.claimed_by) for v in views} == {("claimed", "alice")}
    assert {v.lease_expires_at for v in views} == {clock() + svc.config.lease}
    assert claim_events(seeded) == [("alice", i) for i in high + low]
    with seeded.transaction() as s:  # the rest goes to the next claimer, one item left
        rest = svc.claim_many(s, reviewer_id="bob", queue="adult", limit=4)
    assert [v.id for v in rest] == later
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim_many(s, reviewer_id="bob", queue="adult", limit=4)
    with seeded.transaction() as s:
        assert audit.verify(s).ok
        leased = s.execute(text(
            "SELECT claimed_by, count(*) FROM review_item WHERE status = 'claimed' "
            "GROUP BY claimed_by ORDER BY claimed_by")).all()
    assert [tuple(r) for r in leased] == [("alice", 4), ("bob", 1)]


def test_a_batch_is_the_same_as_that_many_single_claims(
    seeded: Database, svc: ReviewService
) -> None:
    """Control for the order above: single claims, one per transaction, take the same items."""
    ids = record_many(svc, seeded, [f"s{i}" for i in range(6)], priority=100)
    singles = []
    for _ in range(3):
        with seeded.transaction() as s:
            singles.append(svc.claim(s, reviewer_id="alice", queue="adult").id)
    with seeded.transaction() as s:
        batch = [v.id for v in svc.claim_many(s, reviewer_id="bob", queue="adult", limit=3)]
    assert singles == ids[:3] and batch == ids[3:]


def test_a_batch_stops_at_the_exposure_cap(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    record_many(svc, seeded, [f"v{i}" for i in range(5)], **SEVERE)
    with seeded.transaction() as s:
        first = svc.claim_many(s, reviewer_id="sam", queue="severe", limit=5)
    assert len(first) == 3  # the cap is 3 per 8 hours in review_support
    with pytest.raises(ExposureCapReached), seeded.transaction() as s:
        svc.claim_many(s, reviewer_id="sam", queue="severe", limit=5)
    with seeded.transaction() as s:
        n = s.execute(text("SELECT count(*) FROM exposure WHERE reviewer_id = 'sam'")).scalar()
    assert n == 3
    with seeded.transaction() as s:  # another reviewer takes what is left
        assert len(svc.claim_many(s, reviewer_id="sue", queue="severe", limit=5)) == 2


def test_a_batch_never_hands_back_an_item_the_reviewer_already_decided(
    seeded: Database, svc: ReviewService
) -> None:
    ids = record_many(svc, seeded, ["t1", "t2"], **SEVERE)
    with seeded.transaction() as s:
        svc.claim_many(s, reviewer_id="sam", queue="severe", limit=2)
    for i in ids:
        with seeded.transaction() as s:
            svc.decide(s, item_id=i, reviewer_id="sam", verdict="violating",
                       categories=["cat.critical"])
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim_many(s, reviewer_id="sam", queue="severe", limit=2)  # second person needed
    with seeded.transaction() as s:
        assert sorted(v.id for v in svc.claim_many(s, reviewer_id="sue", queue="severe",
                                                   limit=2)) == ids


@pytest.mark.parametrize("limit", [0, -1, MAX_CLAIM_BATCH + 1])
def test_batch_size_out_of_bounds_is_refused(
    seeded: Database, svc: ReviewService, limit: int
) -> None:
    record_many(svc, seeded, ["z"])
    with pytest.raises(ReviewError, match="a claim takes 1 to"), seeded.transaction() as s:
        svc.claim_many(s, reviewer_id="alice", limit=limit)


def test_across_queues_the_item_due_first_is_claimed_first(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    """carol works adult (24 h SLA) and medical (12 h SLA): an adult item waiting since long
    before is due before a fresh medical one, and a fresh medical one before a fresh adult one."""
    old_adult = record_many(svc, seeded, ["old"], queue="adult")[0]
    clock.advance(hours=13)
    fresh_adult = record_many(svc, seeded, ["fa"], queue="adult")[0]
    medical = record_many(svc, seeded, ["m"], queue="medical")[0]
    order = []
    for _ in range(3):
        with seeded.transaction() as s:
            order.append(svc.claim(s, reviewer_id="carol").id)
    assert order == [old_adult, medical, fresh_adult]


def test_across_queues_a_queue_whose_head_is_not_for_this_reviewer_is_not_a_dead_end(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    """The most urgent queue's first item waits for a second person and carol was the first:
    her claim goes on to her next queue instead of reporting nothing to claim."""
    two = record_many(svc, seeded, ["h1"], queue="medical", reviewers_required=2,
                      proposed=ACTIONS["critical"])[0]
    with seeded.transaction() as s:
        svc.claim(s, reviewer_id="carol", item_id=two)
    with seeded.transaction() as s:
        svc.decide(s, item_id=two, reviewer_id="carol", verdict="violating",
                   categories=["cat.critical"])
    clock.advance(minutes=1)
    adult = record_many(svc, seeded, ["h2"], queue="adult")[0]
    with seeded.transaction() as s:
        assert svc.claim(s, reviewer_id="carol").id == adult


@pytest.mark.parametrize("sweep_every_h", [0, 1])
def test_a_claim_never_reports_nothing_while_an_expired_lease_waits(
    seeded: Database, clock: FakeClock, sweep_every_h: int
) -> None:
    """The claim path sweeps expired leases at most once per `lease_sweep_every` while there is
    other work, and always before it would answer "nothing to claim"."""
    svc = ReviewService(make_config(lease_sweep_every=dt.timedelta(hours=sweep_every_h)),
                        clock=clock)
    a, b = record_many(svc, seeded, ["x1", "x2"])
    with seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", item_id=a)
    clock.advance(minutes=16)  # alice's lease ran out; the periodic sweep is due only if 0 h
    with seeded.transaction() as s:
        first = svc.claim(s, reviewer_id="bob").id
    with seeded.transaction() as s:
        second = svc.claim(s, reviewer_id="bob").id
    # a is the older, more urgent item: it comes first only when the periodic sweep ran
    assert [first, second] == ([a, b] if sweep_every_h == 0 else [b, a])
    with seeded.transaction() as s:
        released = s.execute(text(
            "SELECT actor, subject_id FROM audit_event WHERE event = 'item.release_first'")).all()
    assert [tuple(r) for r in released] == [("system:lookfirst", str(a))]
