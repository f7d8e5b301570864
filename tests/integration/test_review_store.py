"""The review store against real databases (SQLite and PostgreSQL): the transition table in
the UPDATE itself, the constraints that hold the invariants when Python is bypassed, and the
workflows (leases, entitlement, exposure, two people, appeals, notices, reasons)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from review import audit
from review.db import Database
from review.errors import (
    ActionNotApproved,
    ActionNotDue,
    AlreadyDecided,
    AppealNotAllowed,
    ExposureCapReached,
    InvalidTransition,
    NotClaimant,
    NotEntitled,
    NothingToClaim,
    UnknownReviewer,
)
from review.schema import Action, Appeal, AuditEvent, Decision, VerdictRow
from review.service import ReviewService, Routing
from review.states import (
    ACTION_TRANSITIONS,
    CLOSED_ITEM_STATUSES,
    IRREVERSIBLE_ACTIONS,
    ITEM_TRANSITIONS,
    ActionKind,
    ActionStatus,
    ItemStatus,
)
from tests.review_support import ACTIONS, FakeClock, make_config, record, upload

H = dt.timedelta(hours=1)
SEVERE: dict[str, Any] = dict(queue="severe", severity="critical", reviewers_required=2,
                              proposed=ACTIONS["critical"])


class _Rollback(Exception):
    """Raised to throw a transaction away after looking at what it did."""


# ---- helpers ---------------------------------------------------------------------------------
def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    with db.transaction() as s:
        return list(s.execute(text(sql), params).all())


def refused(db: Database, sql: str, **params: Any) -> None:
    """The database itself refuses this raw statement (no Python in the way)."""
    with pytest.raises(IntegrityError), db.transaction() as s:
        s.execute(text(sql), params)


def accepted(db: Database, sql: str, **params: Any) -> None:
    """Control: the same shape of statement with lawful values goes through (then is undone)."""
    with pytest.raises(_Rollback), db.transaction() as s:
        s.execute(text(sql), params)
        raise _Rollback


def copy_row_sql(db: Database, table: str, **overrides: str) -> str:
    """INSERT ... SELECT that copies the row `WHERE id = :i` of `table` with some columns set
    to SQL expressions; the column list comes from the live schema, so it keeps up with it."""
    cols = [c["name"] for c in inspect(db.engine).get_columns(table) if c["name"] != "id"]
    exprs = [overrides.get(c, c) for c in cols]
    return (f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(exprs)} "
            f"FROM {table} WHERE id = :i")


def claim_decide(
    svc: ReviewService, db: Database, reviewer: str, verdict: str = "violating",
    categories: tuple[str, ...] = ("cat.high",), *, queue: str | None = None,
    item_id: int | None = None,
) -> Any:
    with db.transaction() as s:
        view = svc.claim(s, reviewer_id=reviewer, queue=queue, item_id=item_id)
        return svc.decide(s, item_id=view.id, reviewer_id=reviewer, verdict=verdict,
                          categories=categories if verdict == "violating" else ())


def actions_of(svc: ReviewService, db: Database, decision_id: str) -> dict[str, dict[str, Any]]:
    with db.transaction() as s:
        return {a["kind"]: a for a in svc.list_actions(s, decision_id=decision_id)}


def events(db: Database, name: str, subject_id: int | str | None = None) -> list[AuditEvent]:
    with db.transaction() as s:
        q = select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.seq)
        if subject_id is not None:
            q = q.where(AuditEvent.subject_id == str(subject_id))
        return list(s.execute(q).scalars())


def item_status(db: Database, item_id: int) -> str:
    return str(rows(db, "SELECT status FROM review_item WHERE id = :i", i=item_id)[0][0])


def record_one(svc: ReviewService, db: Database, n: int | str, **kw: Any) -> Any:
    with db.transaction() as s:
        return record(svc, s, n, **kw)


# ---- the transition tables, enforced in the UPDATE itself ----------------------------------
def _items_in_every_status(svc: ReviewService, db: Database) -> dict[str, int]:
    r = {n: record_one(svc, db, n).item_id for n in ("p", "c", "x", "d")}
    r["s"] = record_one(svc, db, "s", **SEVERE).item_id
    r["e"] = record_one(svc, db, "e", **SEVERE).item_id
    with db.transaction() as s:
        svc.claim(s, reviewer_id="alice", item_id=r["c"])
    claim_decide(svc, db, "alice", "need_more_context", item_id=r["x"])
    claim_decide(svc, db, "alice", "benign", item_id=r["d"])
    claim_decide(svc, db, "sam", "violating", ("cat.critical",), item_id=r["s"])
    claim_decide(svc, db, "sam", "violating", ("cat.critical",), item_id=r["e"])
    claim_decide(svc, db, "sue", "benign", item_id=r["e"])
    by_status = {
        ItemStatus.PENDING: r["p"], ItemStatus.CLAIMED: r["c"],
        ItemStatus.AWAITING_CONTEXT: r["x"], ItemStatus.DECIDED: r["d"],
        ItemStatus.AWAITING_SECOND: r["s"], ItemStatus.ESCALATED: r["e"],
    }
    assert {st: item_status(db, i) for st, i in by_status.items()} == {
        st: str(st) for st in by_status
    }
    assert set(by_status) == set(ItemStatus)
    return {str(k): v for k, v in by_status.items()}


def _lawful_values(target: str, now: dt.datetime) -> dict[str, Any]:
    """What the schema's lease and resolution constraints ask of a row in `target`."""
    if target == ItemStatus.CLAIMED:
        return {"claimed_by": "bob", "lease_expires_at": now + H}
    values: dict[str, Any] = {"claimed_by": None, "lease_expires_at": None}
    if target in CLOSED_ITEM_STATUSES:
        values |= {"resolved_at": now, "resolution": "benign"}
    return values


def test_item_transitions_allowed_by_the_table_and_only_those(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    items = _items_in_every_status(svc, seeded)
    accepted_pairs, refused_pairs = set(), set()
    for name, t in ITEM_TRANSITIONS.items():
        for status, item_id in items.items():
            values = _lawful_values(t.target, clock())
            if status in t.sources:
                with pytest.raises(_Rollback), seeded.transaction() as s:
                    item = svc.core.item_transition(s, item_id, name, actor="test", values=values)
                    assert item.status == t.target
                    last = s.execute(
                        select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)
                    ).scalar_one()  # the audit event is written in the same transaction
                    assert (last.event, last.subject_id) == (f"item.{name}", str(item_id))
                    assert audit.verify(s).ok
                    raise _Rollback
                accepted_pairs.add((name, status))
            else:
                with pytest.raises(InvalidTransition), seeded.transaction() as s:
                    svc.core.item_transition(s, item_id, name, actor="test", values=values)
                refused_pairs.add((name, status))
            assert item_status(seeded, item_id) == status  # nothing leaked out
    table = {(t.name, str(src)) for t in ITEM_TRANSITIONS.values() for src in t.sources}
    assert accepted_pairs == table
    assert len(accepted_pairs) + len(refused_pairs) == len(ITEM_TRANSITIONS) * len(ItemStatus)
    with seeded.transaction() as s:
        assert audit.verify(s).ok


def test_action_transitions_allowed_by_the_table_and_only_those(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    r = record_one(svc, seeded, 1, proposed=())
    claim_decide(svc, seeded, "alice", "benign")
    with seeded.transaction() as s:
        verdict_id = s.execute(select(VerdictRow.id)).scalar_one()
        ids: dict[str, int] = {}
        for st in ActionStatus:
            # a human-approved account action in each status (`approver` satisfies the schema)
            a = svc.core.new_action(s, decision_id=r.decision_id, item_id=r.item_id,
                                kind=ActionKind.SUSPEND, account_id="acct-1",
                                content_sha256="0" * 64, approver=("alice", verdict_id))
            executed = st in (ActionStatus.EXECUTED, ActionStatus.REVERSED)
            s.execute(update(Action).where(Action.id == a.id).values(
                status=st, executed_at=clock() if executed else None))
            ids[str(st)] = a.id
    accepted_pairs = set()
    for name, t in ACTION_TRANSITIONS.items():
        for status, action_id in ids.items():
            values = {"executed_at": clock()} if name == "execute" else {}
            if status in t.sources:
                with pytest.raises(_Rollback), seeded.transaction() as s:
                    a = svc.core.action_transition(s, action_id, name, actor="test", values=values)
                    assert a.status == t.target
                    raise _Rollback
                accepted_pairs.add((name, status))
            else:
                with pytest.raises(InvalidTransition), seeded.transaction() as s:
                    svc.core.action_transition(s, action_id, name, actor="test", values=values)
            assert rows(seeded, "SELECT status FROM action WHERE id = :i", i=action_id)[0][0] \
                == status
    assert accepted_pairs == {(t.name, str(x)) for t in ACTION_TRANSITIONS.values()
                              for x in t.sources}


# ---- the database refuses invariant breaches on its own (raw SQL, no service) --------------
def test_db_refuses_account_action_past_proposed_without_a_person(
    seeded: Database, svc: ReviewService
) -> None:
    r = record_one(svc, seeded, 1, outcome="hold", proposed=("remove_content", "suspend"))
    acts = actions_of(svc, seeded, r.decision_id)
    suspend, remove = acts["suspend"]["id"], acts["remove_content"]["id"]
    # the automated content hold ran without a person: the one lawful exception
    assert acts["hold_content"]["status"] == "executed" and acts["hold_content"]["approvers"] == []
    for status in ("approved", "notified"):
        refused(seeded, "UPDATE action SET status = :st WHERE id = :i", st=status, i=suspend)
    refused(seeded, "UPDATE action SET status = 'executed', executed_at = CURRENT_TIMESTAMP "
                    "WHERE id = :i", i=suspend)
    refused(seeded, "UPDATE action SET status = 'executed', executed_at = CURRENT_TIMESTAMP "
                    "WHERE id = :i", i=remove)  # a content removal is a person's call too
    accepted(seeded, "UPDATE action SET status = 'cancelled' WHERE id = :i", i=suspend)
    # an approved action cannot lose its approver afterwards
    claim_decide(svc, seeded, "alice", "violating", ("cat.high",))
    assert actions_of(svc, seeded, r.decision_id)["suspend"]["status"] == "notified"
    refused(seeded, "UPDATE action SET approver_1 = NULL, approver_1_verdict_id = NULL "
                    "WHERE id = :i", i=suspend)
    # nor can an executed account action be written in without one
    nobody = dict(approver_1="NULL", approver_1_verdict_id="NULL", approver_2="NULL",
                  approver_2_verdict_id="NULL", executed_at="created_at")
    refused(seeded, copy_row_sql(seeded, "action", kind="'warn'", status="'executed'", **nobody),
            i=suspend)
    accepted(seeded, copy_row_sql(seeded, "action", kind="'warn'", status="'cancelled'",
                                  **{**nobody, "executed_at": "NULL"}), i=suspend)


def test_db_refuses_irreversible_action_without_two_distinct_people(
    seeded: Database, svc: ReviewService
) -> None:
    r = record_one(svc, seeded, 1, **SEVERE)
    claim_decide(svc, seeded, "sam", "violating", ("cat.critical",))
    acts = actions_of(svc, seeded, r.decision_id)
    for kind in ("terminate", "report"):
        a = acts[kind]
        assert (a["status"], a["approvers"], a["irreversible"]) == ("proposed", ["sam"], True)
        # approved by one person
        refused(seeded, "UPDATE action SET status = 'approved' WHERE id = :i", i=a["id"])
        refused(seeded, "UPDATE action SET status = 'executed', executed_at = CURRENT_TIMESTAMP"
                        " WHERE id = :i", i=a["id"])
        # approved by the same person twice
        refused(seeded, "UPDATE action SET status = 'approved', approver_2 = approver_1, "
                        "approver_2_verdict_id = approver_1_verdict_id WHERE id = :i", i=a["id"])
    # the service itself: execution before the second person is refused too
    with pytest.raises(ActionNotApproved), seeded.transaction() as s:
        svc.execute(s, action_id=acts["report"]["id"], actor="sam")
    claim_decide(svc, seeded, "sue", "violating", ("cat.critical",))
    acts = actions_of(svc, seeded, r.decision_id)
    for kind in ("terminate", "report"):
        a = acts[kind]
        assert a["approvers"] == ["sam", "sue"] and a["status"] in ("approved", "notified")
        refused(seeded, "UPDATE action SET approver_2 = approver_1, "
                        "approver_2_verdict_id = approver_1_verdict_id WHERE id = :i", i=a["id"])
        refused(seeded, "UPDATE action SET approver_2 = NULL, approver_2_verdict_id = NULL "
                        "WHERE id = :i", i=a["id"])
        # kind and irreversibility cannot be pried apart to dodge the rule
        refused(seeded, "UPDATE action SET irreversible = false, approver_2 = NULL, "
                        "approver_2_verdict_id = NULL WHERE id = :i", i=a["id"])


def test_db_refuses_an_approver_without_their_own_verdict(
    seeded: Database, svc: ReviewService
) -> None:
    r1 = record_one(svc, seeded, 1)
    record_one(svc, seeded, 2)
    claim_decide(svc, seeded, "alice", item_id=r1.item_id)
    v_bob = claim_decide(svc, seeded, "bob").verdict_id
    a = actions_of(svc, seeded, r1.decision_id)["remove_content"]
    assert a["approvers"] == ["alice"]
    # the composite foreign key (verdict id, reviewer) refuses a name without its verdict
    refused(seeded, "UPDATE action SET approver_1 = 'bob' WHERE id = :i", i=a["id"])
    refused(seeded, "UPDATE action SET approver_1 = 'mallory' WHERE id = :i", i=a["id"])
    refused(seeded, "UPDATE action SET approver_1_verdict_id = 999999 WHERE id = :i", i=a["id"])
    refused(seeded, "UPDATE action SET approver_1_verdict_id = NULL WHERE id = :i", i=a["id"])
    # a bare name with no verdict id at all (the foreign key alone would not see it)
    refused(seeded, "UPDATE action SET approver_1 = 'mallory', approver_1_verdict_id = NULL "
                    "WHERE id = :i", i=a["id"])
    refused(seeded, "UPDATE action SET approver_2 = 'mallory' WHERE id = :i", i=a["id"])
    accepted(seeded, "UPDATE action SET approver_1 = 'bob', approver_1_verdict_id = :v "
                     "WHERE id = :i", v=v_bob, i=a["id"])
    # a second approver is bound the same way, and never without a first
    refused(seeded, "UPDATE action SET approver_2 = 'bob', approver_2_verdict_id = :v "
                    "WHERE id = :i", v=v_bob + 1000, i=a["id"])
    refused(seeded, "UPDATE action SET approver_1 = NULL, approver_1_verdict_id = NULL, "
                    "status = 'proposed', approver_2 = 'bob', approver_2_verdict_id = :v "
                    "WHERE id = :i", v=v_bob, i=a["id"])


def test_db_refuses_a_claim_without_a_lease(seeded: Database, svc: ReviewService) -> None:
    item = record_one(svc, seeded, 1).item_id
    refused(seeded, "UPDATE review_item SET status = 'claimed' WHERE id = :i", i=item)
    refused(seeded, "UPDATE review_item SET status = 'claimed', claimed_by = 'alice' "
                    "WHERE id = :i", i=item)
    refused(seeded, "UPDATE review_item SET status = 'claimed', "
                    "lease_expires_at = CURRENT_TIMESTAMP WHERE id = :i", i=item)
    refused(seeded, "UPDATE review_item SET claimed_by = 'alice', "
                    "lease_expires_at = CURRENT_TIMESTAMP WHERE id = :i", i=item)
    refused(seeded, "UPDATE review_item SET status = 'decided' WHERE id = :i", i=item)
    accepted(seeded, "UPDATE review_item SET status = 'claimed', claimed_by = 'alice', "
                     "lease_expires_at = CURRENT_TIMESTAMP WHERE id = :i", i=item)


def test_db_refuses_two_verdicts_by_one_reviewer_on_one_item(
    seeded: Database, svc: ReviewService
) -> None:
    record_one(svc, seeded, 1, **SEVERE)
    v = claim_decide(svc, seeded, "sam", "violating", ("cat.critical",)).verdict_id
    refused(seeded, copy_row_sql(seeded, "verdict", verdict="'benign'"), i=v)
    # another reviewer through the same credential: the database refuses it too (issue 16)
    refused(seeded, copy_row_sql(seeded, "verdict", reviewer_id="'sue'"), i=v)
    accepted(seeded, copy_row_sql(seeded, "verdict", reviewer_id="'sue'",
                                  credential="'key:2'"), i=v)
    # and through the service: the same person cannot give the second verdict
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="sam", queue="severe")


def test_db_refuses_a_second_initial_item_for_one_decision(
    seeded: Database, svc: ReviewService
) -> None:
    item = record_one(svc, seeded, 1).item_id
    refused(seeded, copy_row_sql(seeded, "review_item"), i=item)
    refused(seeded, copy_row_sql(seeded, "review_item", queue="'appeals'"), i=item)
    # the index is partial: other kinds of item for the same decision are lawful
    accepted(seeded, copy_row_sql(seeded, "review_item", kind="'appeal'"), i=item)


# ---- claims and leases -------------------------------------------------------------------------
def test_lease_expiry_returns_the_item_with_an_audit_event(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    item = record_one(svc, seeded, 1).item_id
    with seeded.transaction() as s:
        view = svc.claim(s, reviewer_id="alice")
    assert (view.id, view.status, view.claimed_by) == (item, "claimed", "alice")
    assert view.lease_expires_at == clock() + svc.config.lease
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="bob")  # leased: nobody else takes it
    clock.advance(minutes=15, seconds=1)
    with seeded.transaction() as s:
        again = svc.claim(s, reviewer_id="bob")
    assert (again.id, again.claimed_by) == (item, "bob")
    released = events(seeded, "item.release_first", item)
    assert len(released) == 1
    assert (released[0].actor, released[0].data["reason"]) == ("system:lookfirst", "lease_expired")
    # the first claimant's verdict comes too late
    with pytest.raises(NotClaimant), seeded.transaction() as s:
        svc.decide(s, item_id=item, reviewer_id="alice", verdict="benign")
    with seeded.transaction() as s:
        assert svc.decide(s, item_id=item, reviewer_id="bob", verdict="benign").status == "decided"


def test_renew_extends_the_lease(seeded: Database, svc: ReviewService, clock: FakeClock) -> None:
    item = record_one(svc, seeded, 1).item_id
    with seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice")
    clock.advance(minutes=10)
    with seeded.transaction() as s:
        until = svc.renew(s, item_id=item, reviewer_id="alice")
    assert until == clock() + svc.config.lease
    with pytest.raises(NotClaimant), seeded.transaction() as s:
        svc.renew(s, item_id=item, reviewer_id="bob")
    clock.advance(minutes=10)  # 20 minutes since the claim: the renewed lease still holds
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="bob")
    with seeded.transaction() as s:
        assert svc.decide(s, item_id=item, reviewer_id="alice", verdict="benign").status \
            == "decided"
    assert len(events(seeded, "item.renew", item)) == 1


def test_a_decision_after_the_lease_expired_is_refused(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    item = record_one(svc, seeded, 1).item_id
    with seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice")
    clock.advance(minutes=16)  # nobody has swept the lease yet: the row still says alice
    with pytest.raises(NotClaimant), seeded.transaction() as s:
        svc.decide(s, item_id=item, reviewer_id="alice", verdict="violating",
                   categories=["cat.high"])
    with pytest.raises(NotClaimant), seeded.transaction() as s:
        svc.renew(s, item_id=item, reviewer_id="alice")
    assert rows(seeded, "SELECT count(*) FROM verdict")[0][0] == 0
    assert rows(seeded, "SELECT count(*) FROM action WHERE status <> 'proposed'")[0][0] == 0
    # a decision without a claim at all is refused the same way
    other = record_one(svc, seeded, 2).item_id
    with pytest.raises(NotClaimant), seeded.transaction() as s:
        svc.decide(s, item_id=other, reviewer_id="bob", verdict="benign")


def test_release_returns_the_item_and_only_the_claimant_may_release(
    seeded: Database, svc: ReviewService
) -> None:
    item = record_one(svc, seeded, 1).item_id
    with seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice")
    with pytest.raises(NotClaimant), seeded.transaction() as s:
        svc.release(s, item_id=item, reviewer_id="bob")
    with seeded.transaction() as s:
        svc.release(s, item_id=item, reviewer_id="alice")
    assert item_status(seeded, item) == "pending"
    assert events(seeded, "item.release_first", item)[0].data["reason"] == "released"


# ---- entitlement -------------------------------------------------------------------------------
def test_a_reviewer_cannot_claim_see_or_decide_outside_their_queues(
    seeded: Database, svc: ReviewService
) -> None:
    severe = record_one(svc, seeded, 1, **SEVERE).item_id
    with pytest.raises(NotEntitled), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", queue="severe")
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice")  # her own queues are empty; severe is not hers
    with pytest.raises(NotEntitled, match="is not a member of it") as named, \
            seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", item_id=severe)
    assert "lookfirst reviewers grant alice --queue severe --role senior" in named.value.detail
    with pytest.raises(NotEntitled), seeded.transaction() as s:
        svc.show(s, severe, viewer="alice")
    with seeded.transaction() as s:
        assert svc.list_items(s, viewer="alice") == []
        svc.claim(s, reviewer_id="sam", queue="severe")
    with pytest.raises(NotEntitled), seeded.transaction() as s:
        svc.decide(s, item_id=severe, reviewer_id="alice", verdict="benign")
    with pytest.raises(NotEntitled), seeded.transaction() as s:
        svc.record_reveal(s, item_id=severe, reviewer_id="alice", reason="curious")
    with pytest.raises(UnknownReviewer), seeded.transaction() as s:
        svc.claim(s, reviewer_id="mallory")


def test_roles_are_needed_for_the_medical_and_severe_queues(
    seeded: Database, svc: ReviewService
) -> None:
    with seeded.transaction() as s:
        # members of the queues but without the role the queue asks for
        svc.add_reviewer(s, reviewer_id="dan", queues=["medical", "severe", "adult"])
    medical = record_one(svc, seeded, 1, queue="medical").item_id
    severe = record_one(svc, seeded, 2, **SEVERE).item_id
    with seeded.transaction() as s:
        assert svc.entitled_queues(s, "dan") == ["adult"]
    for queue, item in (("medical", medical), ("severe", severe)):
        with pytest.raises(NotEntitled, match="needs role"), seeded.transaction() as s:
            svc.claim(s, reviewer_id="dan", queue=queue)
        with pytest.raises(NotEntitled), seeded.transaction() as s:
            svc.show(s, item, viewer="dan")
    with pytest.raises(NotEntitled), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", queue="medical")
    with seeded.transaction() as s:
        assert svc.claim(s, reviewer_id="carol", queue="medical").id == medical
        assert svc.claim(s, reviewer_id="sid", queue="severe").id == severe
    with seeded.transaction() as s:
        svc.add_reviewer(s, reviewer_id="dan", queues=[], roles=["medical"])
        assert svc.entitled_queues(s, "dan") == ["adult", "medical"]


# ---- reviewer protection: exposure cap -------------------------------------------------------
def test_exposure_cap_on_the_severe_queue(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    for n in range(5):
        record_one(svc, seeded, n, **SEVERE)
    for _ in range(3):
        with seeded.transaction() as s:
            svc.claim(s, reviewer_id="sam", queue="severe")
        clock.advance(minutes=1)
    with pytest.raises(ExposureCapReached) as err, seeded.transaction() as s:
        svc.claim(s, reviewer_id="sam", queue="severe")
    assert err.value.code == "review.exposure_cap"
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="sam")  # other queues stay open, severe is skipped
    with seeded.transaction() as s:
        assert svc.claim(s, reviewer_id="sue", queue="severe").queue == "severe"  # per reviewer
    clock.advance(hours=8)  # the shift window has passed
    with seeded.transaction() as s:
        assert svc.claim(s, reviewer_id="sam", queue="severe").queue == "severe"
    assert rows(seeded, "SELECT count(*) FROM exposure WHERE reviewer_id = 'sam'")[0][0] == 4


# ---- two people ------------------------------------------------------------------------------
def test_irreversible_actions_need_two_distinct_reviewers(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    # the adult queue asks for one reviewer, but a verdict that proposes termination asks two
    r = record_one(svc, seeded, 1)
    first = claim_decide(svc, seeded, "alice", "violating", ("cat.critical",))
    assert first.status == "awaiting_second"
    acts = actions_of(svc, seeded, r.decision_id)
    assert {k for k, a in acts.items() if a["irreversible"]} == {"terminate", "report"}
    assert all(a["status"] == "proposed" for a in acts.values())
    with pytest.raises(NothingToClaim, match="1 item in 'alice'.s queues needs another "
                       "reviewer"), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice")
    with pytest.raises(AlreadyDecided, match="the next verdict must come from another "
                       "reviewer"), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", item_id=r.item_id)
    with pytest.raises(ActionNotApproved), seeded.transaction() as s:
        svc.execute(s, action_id=acts["report"]["id"], actor="alice")
    with seeded.transaction() as s:
        assert svc.execute_due(s) == []
    second = claim_decide(svc, seeded, "bob", "violating", ("cat.critical",))
    assert second.status == "decided"
    acts = actions_of(svc, seeded, r.decision_id)
    for kind in IRREVERSIBLE_ACTIONS & set(acts):
        assert acts[kind]["approvers"] == ["alice", "bob"]
    vrows = rows(seeded, "SELECT reviewer_id, verdict FROM verdict WHERE item_id = :i "
                         "ORDER BY id", i=r.item_id)
    assert [tuple(v) for v in vrows] == [("alice", "violating"), ("bob", "violating")]


def test_the_second_reviewer_does_not_see_the_first_verdict(
    seeded: Database, svc: ReviewService
) -> None:
    r = record_one(svc, seeded, 1, **SEVERE)
    claim_decide(svc, seeded, "sam", "violating", ("cat.critical",))
    with seeded.transaction() as s:
        view = svc.claim(s, reviewer_id="sue", queue="severe")
        assert (view.id, view.verdicts_in, view.verdicts) == (r.item_id, 1, [])
        assert svc.show(s, r.item_id, viewer="sue").verdicts == []
        assert [v["reviewer"] for v in svc.show(s, r.item_id, viewer="sam").verdicts] == ["sam"]
        assert all(v.verdicts == [] for v in svc.list_items(s, viewer="sue"))
        sor = svc.statement_of_reasons(s, r.decision_id)
        assert sor["reviews"][0]["verdicts"] == []  # not even through the statement
        svc.decide(s, item_id=r.item_id, reviewer_id="sue", verdict="violating",
                   categories=["cat.critical"])
    with seeded.transaction() as s:  # closed: now both are on the record
        assert [v["reviewer"] for v in svc.show(s, r.item_id, viewer="sue").verdicts] == [
            "sam", "sue"]


def test_disagreement_escalates_to_the_senior_queue_and_cancels_the_proposals(
    seeded: Database, svc: ReviewService
) -> None:
    with seeded.transaction() as s:
        svc.add_reviewer(s, reviewer_id="sky", queues=["senior"], roles=["senior"])
    r = record_one(svc, seeded, 1, outcome="hold", **SEVERE)
    claim_decide(svc, seeded, "sam", "violating", ("cat.critical",))
    res = claim_decide(svc, seeded, "sue", "benign", queue="severe")
    assert res.status == "escalated" and res.escalated_to is not None
    acts = actions_of(svc, seeded, r.decision_id)
    assert acts.pop("hold_content")["status"] == "executed"  # still hidden while seniors look
    assert acts and all(a["status"] == "cancelled" and a["approvers"] == [] for a in acts.values())
    with seeded.transaction() as s:
        esc = svc.show(s, res.escalated_to, viewer="sid")
        assert (esc.kind, esc.queue, esc.status, esc.reviewers_required) == (
            "escalation", "senior", "pending", 2)
        # the seniors see both verdicts: that is what they are asked to weigh
        assert sorted(v["reviewer"] for v in esc.verdicts) == ["sam", "sue"]
    for who in ("sam", "sue"):  # not the two who disagreed
        with pytest.raises(NothingToClaim), seeded.transaction() as s:
            svc.claim(s, reviewer_id=who, queue="senior")
    claim_decide(svc, seeded, "sid", "violating", ("cat.critical",), queue="senior")
    assert claim_decide(svc, seeded, "sky", "violating", ("cat.critical",)).status == "decided"
    acts = {a["id"]: a for a in actions_of(svc, seeded, r.decision_id).values()}
    live = [a for a in acts.values() if a["status"] not in ("cancelled", "executed")]
    assert {a["kind"] for a in live} == {"remove_content", "suspend", "terminate", "report"}
    assert all(a["approvers"] == ["sid", "sky"] for a in live)


# ---- appeals -------------------------------------------------------------------------------------
def _enforced(svc: ReviewService, db: Database, clock: FakeClock) -> Any:
    """alice removes content and suspends the account; the notice period passes; both run."""
    r = record_one(svc, db, 1)
    claim_decide(svc, db, "alice", "violating", ("cat.high",))
    clock.advance(hours=73)
    with db.transaction() as s:
        assert {a.kind for a in svc.execute_due(s)} == {"remove_content", "suspend"}
    return r


def test_an_upheld_appeal_goes_to_someone_new_and_reverses(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    r = _enforced(svc, seeded, clock)
    with seeded.transaction() as s:
        appeal_id = svc.appeal(s, decision_id=r.decision_id, statement="it is a rash")
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", queue="appeals")
    with seeded.transaction() as s:
        view = svc.claim(s, reviewer_id="bob", queue="appeals")
        assert (view.kind, view.appeal_statement) == ("appeal", "it is a rash")
        res = svc.decide(s, item_id=view.id, reviewer_id="bob", verdict="benign_medical")
    assert {a["kind"]: a["approvers"] for a in res.actions} == {
        "restore_content": ["bob"], "lift_suspension": ["bob"]}
    with seeded.transaction() as s:
        assert {a.kind for a in svc.execute_due(s)} == {"restore_content", "lift_suspension"}
        upheld = s.get(Appeal, appeal_id)
        assert upheld is not None and upheld.status == "upheld"
    acts = actions_of(svc, seeded, r.decision_id)
    assert acts["remove_content"]["status"] == acts["suspend"]["status"] == "reversed"
    assert acts["restore_content"]["status"] == acts["lift_suspension"]["status"] == "executed"
    assert acts["lift_suspension"]["reverses_action_id"] == acts["suspend"]["id"]
    assert len(events(seeded, "appeal.upheld", appeal_id)) == 1


def test_an_appeal_lease_taken_before_deciding_the_upload_cannot_be_used(
    seeded: Database, svc: ReviewService
) -> None:
    """The fresh-eyes rule holds at the verdict too, not only at the claim (the bug: alice
    leased the appeal, then decided the initial review, then decided her own appeal)."""
    r = record_one(svc, seeded, 1, outcome="hold")  # the automated hold can be appealed at once
    with seeded.transaction() as s:
        svc.appeal(s, decision_id=r.decision_id, statement="my own photo")
    with seeded.transaction() as s:
        appeal_item = svc.claim(s, reviewer_id="alice", queue="appeals").id
    claim_decide(svc, seeded, "alice", "violating", ("cat.high",), queue="adult")
    with pytest.raises(AlreadyDecided, match="decided this upload before"), \
            seeded.transaction() as s:
        svc.decide(s, item_id=appeal_item, reviewer_id="alice", verdict="violating",
                   categories=["cat.high"])
    with seeded.transaction() as s:
        svc.release(s, item_id=appeal_item, reviewer_id="alice")
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="alice", queue="appeals")
    res = claim_decide(svc, seeded, "bob", "benign", queue="appeals")
    assert (res.item_id, res.status) == (appeal_item, "decided")


def test_a_rejected_appeal_is_recorded_and_changes_nothing(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    r = _enforced(svc, seeded, clock)
    with seeded.transaction() as s:
        appeal_id = svc.appeal(s, decision_id=r.decision_id, statement="please")
    with pytest.raises(AppealNotAllowed), seeded.transaction() as s:
        svc.appeal(s, decision_id=r.decision_id, statement="again")  # one open at a time
    before = actions_of(svc, seeded, r.decision_id)
    res = claim_decide(svc, seeded, "carol", "violating", ("cat.high",), queue="appeals")
    assert (res.status, res.actions) == ("decided", [])
    with seeded.transaction() as s:
        ap = s.get(Appeal, appeal_id)
        assert ap is not None
        assert (ap.status, ap.resolved_at) == ("rejected", svc.clock())
        assert svc.execute_due(s) == []
    assert actions_of(svc, seeded, r.decision_id) == before
    assert len(events(seeded, "appeal.rejected", appeal_id)) == 1
    clock.advance(days=181)
    with pytest.raises(AppealNotAllowed), seeded.transaction() as s:
        svc.appeal(s, decision_id=r.decision_id, statement="late")


# ---- notice before account actions -------------------------------------------------------------
def test_account_actions_wait_for_the_notice_period(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    r = record_one(svc, seeded, 1)
    claim_decide(svc, seeded, "alice", "violating", ("cat.high",))
    acts = actions_of(svc, seeded, r.decision_id)
    assert acts["suspend"]["status"] == "notified"
    assert acts["remove_content"]["status"] == "approved"  # content: no notice needed
    with seeded.transaction() as s:
        notices = s.execute(text("SELECT payload FROM outbox WHERE topic = 'notice'")).all()
        assert len(notices) == 1
        assert [a.kind for a in svc.execute_due(s)] == ["remove_content"]
    clock.advance(hours=71)
    with pytest.raises(ActionNotDue) as err, seeded.transaction() as s:
        svc.execute(s, action_id=acts["suspend"]["id"], actor="alice")
    assert err.value.code == "action.not_due"
    with seeded.transaction() as s:
        assert svc.execute_due(s) == []
    clock.advance(hours=1)
    with seeded.transaction() as s:
        assert [a.kind for a in svc.execute_due(s)] == ["suspend"]


def test_an_urgent_report_runs_at_once_when_two_approve(
    seeded: Database, svc: ReviewService
) -> None:
    r = record_one(svc, seeded, 1, **SEVERE)
    claim_decide(svc, seeded, "sam", "violating", ("cat.critical",))
    claim_decide(svc, seeded, "sue", "violating", ("cat.critical",))
    acts = actions_of(svc, seeded, r.decision_id)
    assert acts["report"]["status"] == "approved" and acts["report"]["urgent"] is True
    with seeded.transaction() as s:
        done = svc.execute_due(s)
    assert {a.kind for a in done} == {"report", "remove_content"}
    report = next(a for a in done if a.kind == "report")
    assert (report.approver_1, report.approver_2) == ("sam", "sue")
    with seeded.transaction() as s:
        out = s.execute(text("SELECT idempotency_key FROM outbox WHERE topic = 'action'")).all()
    assert f"action:{report.id}" in {o[0] for o in out}


def test_context_during_the_notice_re_enters_review_and_blocks_execution(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    r = record_one(svc, seeded, 1)
    claim_decide(svc, seeded, "alice", "violating", ("cat.high",))
    suspend = actions_of(svc, seeded, r.decision_id)["suspend"]["id"]
    with seeded.transaction() as s:
        item = svc.provide_context(s, decision_id=r.decision_id, statement="my doctor asked",
                                   context={"medical_sharing": True})
    clock.advance(hours=100)  # the notice period is long over
    with pytest.raises(ActionNotDue, match="under review"), seeded.transaction() as s:
        svc.execute(s, action_id=suspend, actor="system")
    with seeded.transaction() as s:
        assert svc.execute_due(s) == []  # the content removal waits as well
        view = svc.claim(s, reviewer_id="bob", queue="appeals")
        assert (view.id, view.kind) == (item, "context")
    with seeded.transaction() as s:
        assert svc.execute_due(s) == []  # claimed is still under review
        svc.decide(s, item_id=item, reviewer_id="bob", verdict="violating",
                   categories=["cat.high"])
    with seeded.transaction() as s:
        assert {a.kind for a in svc.execute_due(s)} == {"remove_content", "suspend"}


def test_context_that_clears_the_user_cancels_the_notified_action(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    r = record_one(svc, seeded, 1)
    claim_decide(svc, seeded, "alice", "violating", ("cat.high",))
    with seeded.transaction() as s:
        svc.execute_due(s)  # the content removal runs; the suspension waits for its notice
        svc.provide_context(s, decision_id=r.decision_id, statement="it is medical")
    claim_decide(svc, seeded, "bob", "benign_medical", queue="appeals")
    clock.advance(hours=100)
    with seeded.transaction() as s:
        assert [a.kind for a in svc.execute_due(s)] == ["restore_content"]
    acts = actions_of(svc, seeded, r.decision_id)
    assert acts["suspend"]["status"] == "cancelled"
    assert acts["remove_content"]["status"] == "reversed"


def test_asking_for_context_then_deciding_does_not_count_as_a_disagreement(
    seeded: Database, svc: ReviewService
) -> None:
    """need_more_context is not a conclusion: once the context is in, one reviewer decides
    (the bug: it counted as a first verdict and the next one always escalated)."""
    r = record_one(svc, seeded, 1)
    assert claim_decide(svc, seeded, "alice", "need_more_context").status == "awaiting_context"
    with pytest.raises(NothingToClaim), seeded.transaction() as s:
        svc.claim(s, reviewer_id="bob")
    with seeded.transaction() as s:
        assert svc.provide_context(s, decision_id=r.decision_id, statement="rash") == r.item_id
    res = claim_decide(svc, seeded, "bob", "violating", ("cat.high",))
    assert (res.status, res.escalated_to) == ("decided", None)
    assert actions_of(svc, seeded, r.decision_id)["suspend"]["approvers"] == ["bob"]
    # an irreversible proposal after a request for context still needs two conclusions
    r2 = record_one(svc, seeded, 2, **SEVERE)
    claim_decide(svc, seeded, "sam", "need_more_context")
    with seeded.transaction() as s:
        svc.provide_context(s, decision_id=r2.decision_id, statement="context")
    assert claim_decide(svc, seeded, "sue", "violating", ("cat.critical",)).status \
        == "awaiting_second"
    assert claim_decide(svc, seeded, "sid", "violating", ("cat.critical",)).status == "decided"
    assert actions_of(svc, seeded, r2.decision_id)["terminate"]["approvers"] == ["sue", "sid"]


# ---- the appeal window for what cannot be undone ----------------------------------------------
def test_terminate_and_delete_data_wait_for_the_appeal_window(
    db: Database, clock: FakeClock
) -> None:
    def erasing(verdict: str, categories: Any) -> list[str]:
        return [*ACTIONS["critical"], "delete_data"] if verdict == "violating" else []

    svc = ReviewService(make_config(actions_for_verdict=erasing), clock=clock)
    with db.transaction() as s:
        svc.add_reviewer(s, reviewer_id="sam", queues=["severe", "appeals"], roles=["senior"])
        svc.add_reviewer(s, reviewer_id="sue", queues=["severe", "appeals"], roles=["senior"])
        svc.add_reviewer(s, reviewer_id="ann", queues=["appeals"])
    r = record_one(svc, db, 1, **SEVERE)
    claim_decide(svc, db, "sam", "violating", ("cat.critical",))
    claim_decide(svc, db, "sue", "violating", ("cat.critical",))
    acts = actions_of(svc, db, r.decision_id)
    window_end = clock() + svc.config.appeal_window
    for kind in ("terminate", "delete_data"):
        assert acts[kind]["status"] == "notified"
        assert dt.datetime.fromisoformat(acts[kind]["not_before"]) >= window_end
    clock.advance(hours=73)
    with db.transaction() as s:  # the suspension runs after notice; erasure does not
        assert {a.kind for a in svc.execute_due(s)} == {"remove_content", "suspend", "report"}
    clock.advance(days=176)  # 179 days since the decision: still inside the window
    for kind in ("terminate", "delete_data"):
        with pytest.raises(ActionNotDue), db.transaction() as s:
            svc.execute(s, action_id=acts[kind]["id"], actor="sue")
    with db.transaction() as s:
        assert svc.execute_due(s) == []
        svc.appeal(s, decision_id=r.decision_id, statement="one last look")
    clock.advance(days=2)  # the window has passed, but an appeal is open
    with pytest.raises(ActionNotDue), db.transaction() as s:
        svc.execute(s, action_id=acts["delete_data"]["id"], actor="sue")
    claim_decide(svc, db, "ann", "violating", ("cat.critical",), queue="appeals")
    with db.transaction() as s:
        done = {a.kind: a for a in svc.execute_due(s)}
    assert set(done) == {"terminate", "delete_data"}
    assert all(a.executed_at is not None and a.executed_at >= window_end
               for a in done.values())
    with db.transaction() as s:
        assert audit.verify(s).ok


# ---- exactly once, QA, and the statement of reasons --------------------------------------------
def test_recording_the_same_upload_twice_returns_the_same_decision(
    seeded: Database, svc: ReviewService, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = record_one(svc, seeded, 1, outcome="hold")
    again = record_one(svc, seeded, 1, outcome="allow", queue=None)  # a retry; routing ignored
    assert first.created and not again.created
    assert (again.decision_id, again.upload_id, again.item_id, again.outcome) == (
        first.decision_id, first.upload_id, first.item_id, "hold")
    other_account = record_one(svc, seeded, 1, account="acct-2", outcome="hold")
    assert other_account.created and other_account.decision_id != first.decision_id
    counts = rows(seeded, "SELECT (SELECT count(*) FROM upload), (SELECT count(*) FROM decision),"
                          " (SELECT count(*) FROM review_item), (SELECT count(*) FROM action "
                          "WHERE kind = 'hold_content'), (SELECT count(*) FROM content)")[0]
    assert tuple(counts) == (2, 2, 2, 2, 1)
    # the database holds the line even if the service's look-up is bypassed
    monkeypatch.setattr(svc.intake, "find_upload", lambda *a, **k: None)
    with pytest.raises(IntegrityError), seeded.transaction() as s:
        record(svc, s, 1)


def test_qa_items_never_produce_actions(seeded: Database, svc: ReviewService) -> None:
    r = record_one(svc, seeded, 1, outcome="allow", queue="qa", qa=True)
    assert (r.outcome, r.queue) == ("allow", "qa") and r.item_id is not None
    with seeded.transaction() as s:
        view = svc.claim(s, reviewer_id="alice", queue="qa")
        assert view.kind == "qa"
        res = svc.decide(s, item_id=view.id, reviewer_id="alice", verdict="violating",
                         categories=["cat.critical"])
    assert (res.status, res.actions) == ("decided", [])  # no second person asked: nothing to do
    assert rows(seeded, "SELECT count(*) FROM action")[0][0] == 0
    with pytest.raises(AppealNotAllowed), seeded.transaction() as s:
        svc.appeal(s, decision_id=r.decision_id, statement="?")
    plain = record_one(svc, seeded, 2, outcome="allow", queue=None)
    assert plain.item_id is None and plain.queue is None


def test_statement_of_reasons_carries_everything(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    rules = [{"rule": "high-nudity", "category": "cat.high", "score": 0.93, "threshold": 0.8}]
    moves = [{"context": "audience", "value": "public", "effect": "threshold -0.05"}]
    routed = Routing(outcome="review", queue="adult", severity="high", priority=100,
                     reviewers_required=1, proposed_actions=("remove_content",), qa_sample=False,
                     scores={"cat.high": 0.93}, reasons={"rules": rules, "routing": moves},
                     model_version="nudenet-320n@sha256:abc", policy_version="policy-7")
    with seeded.transaction() as s:
        r = svc.record(s, upload(1, audience="public"), routed)
    claim_decide(svc, seeded, "alice", "violating", ("cat.high",))
    with seeded.transaction() as s:
        sor = svc.statement_of_reasons(s, r.decision_id)
    assert sor["model_version"] == "nudenet-320n@sha256:abc"
    assert sor["policy_version"] == "policy-7"
    assert sor["rules"] == rules and sor["context_effects"] == moves
    assert sor["detected"] == {"cat.high": 0.93} and sor["context"] == {"audience": "public"}
    assert sor["reviews"][0]["verdicts"][0]["reviewer"] == "alice"
    assert sor["reviews"][0]["verdicts"][0]["categories"] == ["cat.high"]
    assert {a["kind"]: a["approvers"] for a in sor["actions"]} == {
        "remove_content": ["alice"], "suspend": ["alice"]}
    until = dt.datetime.fromisoformat(sor["how_to_appeal"]["until"])
    assert until == clock() + svc.config.appeal_window
    assert r.decision_id in sor["how_to_appeal"]["how"]
    assert sor["upload"]["id"] == "up-1" and sor["outcome"] == "review"


def test_every_workflow_leaves_a_verifiable_chain(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    _enforced(svc, seeded, clock)
    with seeded.transaction() as s:
        report = audit.verify(s)
        assert report.ok and report.events > 10
        assert s.execute(select(Decision)).scalars().one().outcome == "review"

