"""Bulk review (issue 5, item 11) on SQLite and PostgreSQL: one act decides every open copy of
an image, or one account's upload burst, with an audit event per item and one for the act;
entitlement, leases, exposure caps and the two-person rule hold for each item as if decided
one by one."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from review import audit
from review.db import Database
from review.errors import (
    AlreadyDecided,
    NotClaimant,
    NotEntitled,
    ReviewError,
)
from review.schema import Action, Appeal, AuditEvent, ReviewItem, VerdictRow
from review.service import NewUpload, ReviewService
from review.states import ActionStatus, ItemStatus
from tests.review_support import ACTIONS, FakeClock, routing, sha

SEVERE: dict[str, Any] = dict(queue="severe", severity="critical", reviewers_required=2,
                              proposed=ACTIONS["critical"])


def same_image(n: int | str, image: str, account: str = "acct-1") -> NewUpload:
    """Upload `n` of the image `image` (the same sha256 for every upload of it)."""
    return NewUpload(account_id=account, external_id=f"up-{n}", source="test", context={},
                     sha256=sha(f"image-{image}"), mime="image/jpeg", width=10, height=10,
                     size_bytes=100)


def add(db: Database, svc: ReviewService, n: int | str, image: str, *, account: str = "acct-1",
        **kw: Any) -> int:
    with db.transaction() as s:
        rec = svc.record(s, same_image(n, image, account), routing(**kw))
    assert rec.item_id is not None
    return rec.item_id


def claim(db: Database, svc: ReviewService, reviewer: str, item_id: int) -> None:
    with db.transaction() as s:
        svc.claim(s, reviewer_id=reviewer, item_id=item_id)


def item(db: Database, item_id: int) -> ReviewItem:
    with db.transaction() as s:
        it = s.get(ReviewItem, item_id)
        assert it is not None
        return it


def verdicts(db: Database, item_id: int) -> list[str]:
    with db.transaction() as s:
        return list(s.execute(select(VerdictRow.reviewer_id).where(VerdictRow.item_id == item_id)
                              .order_by(VerdictRow.id)).scalars())


def events(db: Database, event: str) -> list[AuditEvent]:
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent).where(AuditEvent.event == event)
                              .order_by(AuditEvent.seq)).scalars())


def chain_ok(db: Database) -> None:
    with db.transaction() as s:
        report = audit.verify(s)
    assert report.ok, report


# ---- grouping ------------------------------------------------------------------------------
def test_every_open_copy_of_an_image_is_decided_in_one_act(
    seeded: Database, svc: ReviewService
) -> None:
    db = seeded
    copies = [add(db, svc, i, "x", account=f"acct-{i}") for i in range(5)]
    other = add(db, svc, "o", "y")
    claim(db, svc, "alice", copies[2])
    with db.transaction() as s:
        results = svc.decide_bulk(s, item_id=copies[2], reviewer_id="alice",
                                  verdict="violating", categories=["cat.low"], note="same image")
    assert [r.item_id for r in results] == [copies[2]] + [c for c in copies if c != copies[2]]
    assert {r.status for r in results} == {ItemStatus.DECIDED}
    for r in results:
        assert [a["kind"] for a in r.actions] == ["remove_content"]
        assert {a["status"] for a in r.actions} == {ActionStatus.APPROVED}
        assert verdicts(db, r.item_id) == ["alice"]
    assert item(db, other).status == ItemStatus.PENDING  # another image is not touched
    # an audit event per item (claim, verdict, decision), and one for the act
    decided = {int(e.subject_id) for e in events(db, "item.decide")}
    assert decided == set(copies)
    assert {int(e.subject_id) for e in events(db, "item.claim")} == set(copies)
    assert len(events(db, "verdict.recorded")) == len(copies)
    (bulk,) = events(db, "bulk.decided")
    assert bulk.actor == "alice" and int(bulk.subject_id) == copies[2]
    assert bulk.data["group"] == "sha256" and bulk.data["key"] == sha("image-x")
    assert sorted(bulk.data["items"]) == sorted(copies) and bulk.data["skipped"] == []
    chain_ok(db)


def test_an_account_burst_is_decided_together_within_its_window(
    seeded: Database, svc: ReviewService, clock: FakeClock
) -> None:
    db = seeded
    burst = []
    for i in range(4):  # four different images from one account, ten minutes apart
        burst.append(add(db, svc, f"b{i}", f"b{i}", account="acct-burst"))
        clock.advance(minutes=10)
    clock.advance(hours=2)
    later = add(db, svc, "late", "late", account="acct-burst")
    stranger = add(db, svc, "s", "b0", account="acct-other")  # same image, other account
    claim(db, svc, "bob", burst[0])
    with db.transaction() as s:
        results = svc.decide_bulk(s, item_id=burst[0], reviewer_id="bob", verdict="benign",
                                  group="account_burst", burst_window=dt.timedelta(hours=1))
    assert [r.item_id for r in results] == burst
    assert {r.status for r in results} == {ItemStatus.DECIDED}
    assert item(db, later).status == ItemStatus.PENDING
    assert item(db, stranger).status == ItemStatus.PENDING
    (bulk,) = events(db, "bulk.decided")
    assert bulk.data["group"] == "account_burst" and bulk.data["key"] == "acct-burst"
    assert bulk.data["window_s"] == 3600
    chain_ok(db)


# ---- the rules of a single claim and verdict hold for each item ------------------------------
def test_two_person_items_get_one_verdict_each_and_wait_for_a_second_person(
    seeded: Database, svc: ReviewService
) -> None:
    db = seeded
    copies = [add(db, svc, i, "severe", **SEVERE) for i in range(3)]
    claim(db, svc, "sam", copies[0])
    with db.transaction() as s:
        first = svc.decide_bulk(s, item_id=copies[0], reviewer_id="sam", verdict="violating",
                                categories=["cat.critical"])
    assert [r.item_id for r in first] == copies
    assert {r.status for r in first} == {ItemStatus.AWAITING_SECOND}  # never decided by one
    with db.transaction() as s:
        approved = s.execute(select(func.count()).select_from(Action).where(
            Action.status.not_in([ActionStatus.PROPOSED, ActionStatus.CANCELLED]))).scalar_one()
    assert approved == 0
    for c in copies:  # sam cannot give the second verdict himself, in bulk or one by one
        with pytest.raises(AlreadyDecided, match="must come from another reviewer"), \
                db.transaction() as s:
            svc.claim(s, reviewer_id="sam", item_id=c)
    claim(db, svc, "sue", copies[1])
    with db.transaction() as s:
        second = svc.decide_bulk(s, item_id=copies[1], reviewer_id="sue", verdict="violating",
                                 categories=["cat.critical"])
    assert sorted(r.item_id for r in second) == sorted(copies)
    assert {r.status for r in second} == {ItemStatus.DECIDED}
    for r in second:
        assert verdicts(db, r.item_id) == ["sam", "sue"]
        for a in r.actions:
            assert a["approvers"] == ["sam", "sue"]
    chain_ok(db)


def test_items_out_of_reach_are_skipped_and_named(
    seeded: Database, svc: ReviewService
) -> None:
    """Held by someone else, in a queue the reviewer may not see, already closed, or an
    appeal (the user's own statement deserves its own look): each stays as it was."""
    db = seeded
    anchor = add(db, svc, 0, "z")
    held = add(db, svc, 1, "z")
    medical = add(db, svc, 2, "z", queue="medical")
    closed = add(db, svc, 3, "z")
    plain = add(db, svc, 4, "z")
    appealed = add(db, svc, 5, "z")
    claim(db, svc, "bob", held)
    claim(db, svc, "alice", closed)
    with db.transaction() as s:
        svc.decide(s, item_id=closed, reviewer_id="alice", verdict="benign")
    claim(db, svc, "carol", appealed)
    decision_id = item(db, appealed).decision_id
    with db.transaction() as s:
        svc.decide(s, item_id=appealed, reviewer_id="carol", verdict="violating",
                   categories=["cat.low"])
        svc.execute_due(s)
        appeal_id = svc.appeal(s, decision_id=decision_id, statement="it is a painting")
    claim(db, svc, "alice", anchor)
    with db.transaction() as s:
        results = svc.decide_bulk(s, item_id=anchor, reviewer_id="alice", verdict="benign")
    assert [r.item_id for r in results] == [anchor, plain]
    it = item(db, held)
    assert it.status == ItemStatus.CLAIMED and it.claimed_by == "bob"
    assert item(db, medical).status == ItemStatus.PENDING  # alice has no medical role
    assert verdicts(db, closed) == ["alice"]  # decided before: not decided again
    with db.transaction() as s:
        appeal_status = s.execute(
            select(ReviewItem.status).join(Appeal, Appeal.item_id == ReviewItem.id)
            .where(Appeal.id == appeal_id)
        ).scalar_one()
    assert appeal_status == ItemStatus.PENDING
    (bulk,) = events(db, "bulk.decided")
    assert bulk.data["skipped"] == []  # out of reach was never a candidate
    chain_ok(db)


def test_the_exposure_cap_holds_per_item_in_a_bulk_act(
    seeded: Database, svc: ReviewService
) -> None:
    db = seeded
    copies = [add(db, svc, i, "capped", **SEVERE) for i in range(5)]  # cap: 3 per 8 hours
    claim(db, svc, "sid", copies[0])
    with db.transaction() as s:
        results = svc.decide_bulk(s, item_id=copies[0], reviewer_id="sid",
                                  verdict="violating", categories=["cat.critical"])
    assert [r.item_id for r in results] == copies[:3]
    for c in copies[3:]:
        assert item(db, c).status == ItemStatus.PENDING and verdicts(db, c) == []
    (bulk,) = events(db, "bulk.decided")
    assert bulk.data["skipped"] == copies[3:]


def test_refusals_change_nothing(seeded: Database, svc: ReviewService) -> None:
    db = seeded
    a, b = add(db, svc, 0, "r"), add(db, svc, 1, "r")
    severe = add(db, svc, 2, "r", queue="severe", severity="critical")
    with pytest.raises(NotClaimant), db.transaction() as s:  # no lease on the anchor
        svc.decide_bulk(s, item_id=a, reviewer_id="alice", verdict="benign")
    with pytest.raises(NotEntitled), db.transaction() as s:
        svc.decide_bulk(s, item_id=severe, reviewer_id="alice", verdict="benign")
    claim(db, svc, "alice", a)
    for kw in ({"verdict": "need_more_context"}, {"verdict": "maybe"},
               {"verdict": "benign", "group": "colour"},
               {"verdict": "benign", "group": "account_burst",
                "burst_window": dt.timedelta(0)}):
        with pytest.raises(ReviewError), db.transaction() as s:
            svc.decide_bulk(s, item_id=a, reviewer_id="alice", **kw)
    with pytest.raises(ReviewError), db.transaction() as s:  # violating names its categories
        svc.decide_bulk(s, item_id=a, reviewer_id="alice", verdict="violating")
    assert item(db, a).claimed_by == "alice" and item(db, b).status == ItemStatus.PENDING
    assert verdicts(db, a) == [] and events(db, "bulk.decided") == []
    chain_ok(db)


def test_two_reviewers_bulk_deciding_the_same_image_at_once_never_decide_an_item_twice(
    seeded: Database, svc: ReviewService
) -> None:
    db = seeded
    copies = [add(db, svc, i, "race") for i in range(24)]
    claim(db, svc, "alice", copies[0])
    claim(db, svc, "bob", copies[1])
    errors: list[BaseException] = []
    done: dict[str, list[int]] = {}
    start = threading.Barrier(2)

    def act(reviewer: str, anchor: int, verdict: str) -> None:
        try:
            start.wait(timeout=10)
            with db.transaction() as s:
                res = svc.decide_bulk(s, item_id=anchor, reviewer_id=reviewer, verdict=verdict)
            done[reviewer] = [r.item_id for r in res]
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=act, args=("alice", copies[0], "benign")),
               threading.Thread(target=act, args=("bob", copies[1], "benign_medical"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert sorted(done["alice"] + done["bob"]) == copies  # each item decided exactly once
    for c in copies:
        assert len(verdicts(db, c)) == 1
        assert item(db, c).status == ItemStatus.DECIDED
    chain_ok(db)


# ---- the command line ------------------------------------------------------------------------
def test_cli_decide_bulk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import app
    from pipeline.runtime import Runtime
    from pipeline.settings import Settings
    from review.service import Routing

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("LOOKFIRST_DATABASE_URL", url)
    monkeypatch.setenv("LOOKFIRST_DATA_DIR", str(tmp_path / "var"))
    rt = Runtime(Settings())
    rt.db.upgrade()
    route = Routing(outcome="review", queue="adult", severity="high", priority=100,
                    reviewers_required=1, proposed_actions=(), qa_sample=False,
                    scores={"nudity.explicit": 0.7}, reasons={"rules": []},
                    model_version="test@sha256:0", policy_version="test")
    with rt.db.transaction() as s:
        rt.review.add_reviewer(s, reviewer_id="rita", queues=["adult"])
        ids = [rt.review.record(s, same_image(i, "cli"), route).item_id for i in range(3)]
        rt.review.claim(s, reviewer_id="rita", item_id=ids[0])
    rt.db.dispose()

    runner = CliRunner()
    refused = runner.invoke(app, ["review", "decide-bulk", str(ids[1]), "--reviewer", "rita",
                                  "--verdict", "benign", "--json"])
    assert refused.exit_code == 2, refused.output
    assert json.loads(refused.output)["error"]["code"] == "review.not_claimant"
    ok = runner.invoke(app, ["review", "decide-bulk", str(ids[0]), "--reviewer", "rita",
                             "--verdict", "benign", "--by", "sha256", "--json"])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.output)
    assert [r["item"] for r in out["items"]] == ids
    assert {r["status"] for r in out["items"]} == {"decided"}
