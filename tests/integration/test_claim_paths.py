"""The claim paths agree.  On PostgreSQL a claim runs inside the server (`lookfirst_claim`,
review/claims/function.py), in the caller's transaction or, through the claim desk, as a
transaction of its own; on SQLite, and on PostgreSQL when told to, it runs in Python,
statement by statement.  Random scenarios (entitlement, roles, exposure caps and their
windows, leases that expire, two-person items, appeals for fresh eyes, batches across queues)
run once on each path from the same empty database and the same clock; every claim must
answer the same (the same items in the same order and the same view, or the same refusal),
and the tables must end the same, down to each audit event's hash."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from review import ClaimDesk, audit
from review import intake as intake_module
from review.db import Database
from review.errors import ReviewError
from review.service import ReviewService
from tests.databases import PgServer
from tests.review_support import ACTIONS, FakeClock, make_config, record

pytestmark = pytest.mark.postgres

#: every id takes the server path: quotes, backslashes, control characters and non-ASCII ids
#: (one outside the Basic Multilingual Plane) must hash there as Python's audit JSON does
REVIEWERS: dict[str, tuple[list[str], list[str]]] = {
    "alice": (["adult", "qa", "appeals"], []),
    "bob": (["adult", "qa", "appeals", "medical"], []),
    "carol": (["adult", "appeals", "medical"], ["medical"]),
    "sam": (["severe", "senior", "appeals"], ["senior"]),
    "sue": (["severe", "senior", "appeals", "adult"], ["senior"]),
    'o\'neil "\\x"': (["adult", "appeals"], []),
    "zoë": (["adult", "qa"], []),
    "ünï\tcode 🙂": (["adult", "appeals"], []),
}
CLAIMERS = [*REVIEWERS, "ghost", "retired"]
PROFILES: dict[str, dict[str, Any]] = {
    "adult": dict(queue="adult", proposed=("remove_content",)),
    "medical": dict(queue="medical", severity="low", proposed=()),
    "severe": dict(outcome="hold", queue="severe", severity="critical", reviewers_required=2,
                   proposed=ACTIONS["critical"]),
    "senior": dict(queue="senior", severity="critical", proposed=()),
    "qa": dict(outcome="allow", queue="qa", qa=True),
}
QUEUE_NAMES = ["adult", "medical", "severe", "senior", "qa", "appeals"]
TICKS = [dt.timedelta(minutes=5), dt.timedelta(minutes=16), dt.timedelta(hours=9)]

seeds = st.lists(st.tuples(st.sampled_from(sorted(PROFILES)), st.integers(0, 4)),
                 min_size=1, max_size=12)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.sampled_from(CLAIMERS),
                  st.none() | st.sampled_from(QUEUE_NAMES), st.none() | st.integers(0, 13),
                  st.sampled_from([1, 1, 2, 3, 5])),
        st.tuples(st.just("decide"), st.sampled_from(sorted(REVIEWERS)),
                  st.sampled_from(["violating", "violating", "benign", "need_more_context"])),
        st.tuples(st.just("release"), st.sampled_from(sorted(REVIEWERS))),
        st.tuples(st.just("appeal"), st.integers(0, 11)),
        st.tuples(st.just("tick"), st.sampled_from(TICKS)),
    ),
    min_size=1, max_size=25,
)


@pytest.fixture(scope="module")
def pg_db(pg_server: PgServer) -> Iterator[Database]:
    gen = pg_server.copy()
    url = next(gen)
    db = Database(url, pool_size=2)
    db.upgrade()
    try:
        yield db
    finally:
        db.dispose()
        gen.close()


def reset(db: Database) -> None:
    """Back to the migrated, empty database: the same ids and the same genesis heads."""
    with db.transaction() as s:
        tables = [r[0] for r in s.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('alembic_version', 'audit_head')"))]
        s.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        s.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": audit.GENESIS})


def run(db: Database, path: str, seed: list[tuple[str, int]],
        steps: list[tuple[Any, ...]]) -> tuple[list[Any], dict[str, list[Any]]]:
    """`path`: "python" (claims statement by statement) or "server" (`lookfirst_claim`), each
    inside the caller's transaction (`ReviewService.claim_many`); "python-desk" and "desk":
    the same through the `ClaimDesk`, where the claim and the lease sweeps are transactions of
    their own."""
    # upload and decision ids are uuid4s; both runs must draw the same ones (they are in the
    # views and in the audit events' hashes)
    ids = itertools.count(1)
    with mock.patch.object(intake_module, "uuid",
                           SimpleNamespace(uuid4=lambda: uuid.UUID(int=next(ids)))):
        return _run(db, path, seed, steps)


def _run(db: Database, path: str, seed: list[tuple[str, int]],
         steps: list[tuple[Any, ...]]) -> tuple[list[Any], dict[str, list[Any]]]:
    reset(db)
    clock = FakeClock()
    svc = ReviewService(make_config(), clock=clock,
                        claims_in_server=path in ("server", "desk"))
    desk = ClaimDesk(db, svc)
    decisions: list[str] = []
    with db.transaction() as s:
        for rid, (queues, roles) in REVIEWERS.items():
            svc.add_reviewer(s, reviewer_id=rid, queues=queues, roles=roles)
        svc.add_reviewer(s, reviewer_id="retired", queues=["adult"])
        s.execute(text("UPDATE reviewer SET active = false WHERE id = 'retired'"))
        for n, (profile, prio) in enumerate(seed):
            decisions.append(record(svc, s, n, account=f"acct-{n % 3}", priority=100 + prio,
                                    **PROFILES[profile]).decision_id)
            clock.advance(seconds=7)
    answers: list[Any] = []
    for step in steps:
        try:
            if path.endswith("desk") and step[0] == "claim":
                _, who, queue, item, limit = step
                answers.append([v.as_dict() for v in desk.claim_many(
                    reviewer_id=who, queue=queue, item_id=None if item is None else item + 1,
                    limit=limit)])
                continue
            with db.transaction() as s:
                answers.append(_step(svc, s, clock, decisions, step))
        except ReviewError as exc:
            answers.append((type(exc).__name__, str(exc)))
    with db.transaction() as s:
        report = audit.verify(s)
        assert report.ok, report
        tables = {
            "review_item": list(s.execute(text(
                "SELECT id, kind, queue, status, claimed_by, lease_expires_at, resolution, "
                "resolved_at FROM review_item ORDER BY id"))),
            "exposure": list(s.execute(text(
                "SELECT id, reviewer_id, queue, item_id, at FROM exposure ORDER BY id"))),
            "verdict": list(s.execute(text(
                "SELECT id, item_id, reviewer_id, verdict FROM verdict ORDER BY id"))),
            "audit_event": list(s.execute(text(
                "SELECT chain, seq, at, actor, event, subject_type, subject_id, "
                "CAST(CAST(data AS jsonb) AS text), prev_hash, hash FROM audit_event "
                "ORDER BY chain, seq"))),
            "audit_head": list(s.execute(text("SELECT id, seq, hash FROM audit_head "
                                              "ORDER BY id"))),
        }
    return answers, tables


def _step(svc: ReviewService, s: Any, clock: FakeClock, decisions: list[str],
          step: tuple[Any, ...]) -> Any:
    kind = step[0]
    if kind == "claim":
        _, who, queue, item, limit = step
        views = svc.claim_many(s, reviewer_id=who, queue=queue,
                               item_id=None if item is None else item + 1, limit=limit)
        return [v.as_dict() for v in views]
    if kind == "decide":
        _, who, verdict = step
        mine = s.execute(text("SELECT id, queue FROM review_item WHERE claimed_by = :r "
                              "ORDER BY id LIMIT 1"), {"r": who}).first()
        if mine is None:
            return "nothing claimed"
        cats = (["cat.critical"] if mine.queue in ("severe", "senior") else ["cat.high"]) \
            if verdict == "violating" else []
        res = svc.decide(s, item_id=mine.id, reviewer_id=who, verdict=verdict, categories=cats)
        return (res.item_id, res.status, res.verdict_id, res.escalated_to, res.actions)
    if kind == "release":
        mine = s.execute(text("SELECT id FROM review_item WHERE claimed_by = :r "
                              "ORDER BY id LIMIT 1"), {"r": step[1]}).first()
        if mine is None:
            return "nothing claimed"
        svc.release(s, item_id=mine.id, reviewer_id=step[1])
        return mine.id
    if kind == "appeal":
        if step[1] >= len(decisions):
            return "no such decision"
        return svc.appeal(s, decision_id=decisions[step[1]], statement="please look again")
    clock.now += step[1]
    return "tick"


@settings(max_examples=40, deadline=None)
@given(seed=seeds, steps=ops)
def test_claim_in_server_matches_claim_in_python(pg_db: Database, seed: list[tuple[str, int]],
                                                 steps: list[tuple[Any, ...]]) -> None:
    for reference, path in (("python", "server"), ("python-desk", "desk")):
        python = run(pg_db, reference, seed, steps)
        other = run(pg_db, path, seed, steps)
        assert other[0] == python[0], path
        for table in python[1]:
            assert other[1][table] == python[1][table], (path, table)


def test_scenario_reaches_what_the_paths_must_agree_on(pg_db: Database) -> None:
    """A scripted run that reaches each case the random ones are meant to cover, so the
    comparison above is not vacuous: batches across queues, a cap stopping a batch, a refusal
    of each kind, an expired lease returned, a second reviewer, fresh eyes on an appeal."""
    seed = [("adult", 0), ("severe", 4), ("severe", 1), ("severe", 2), ("severe", 3),
            ("medical", 1), ("adult", 3), ("senior", 2)]
    steps: list[tuple[Any, ...]] = [
        ("claim", "sue", None, None, 5),         # severe (cap 3) then senior, adult
        ("claim", "sue", "severe", None, 1),     # the cap is spent
        ("claim", "ghost", None, None, 1),       # not registered
        ("claim", "retired", None, None, 1),     # inactive
        ("claim", "alice", "medical", None, 1),  # not a member
        ("claim", "bob", "medical", None, 1),    # a member without the role
        ("decide", "sue", "violating"),          # first of two verdicts
        ("tick", dt.timedelta(minutes=16)),      # sue's other leases run out
        ("claim", "sam", "severe", None, 3),     # a second reviewer, after the sweep
        ("decide", "sam", "violating"),
        ("claim", 'o\'neil "\\x"', None, None, 2),
        ("decide", 'o\'neil "\\x"', "violating"),
        ("appeal", 0),
        ("claim", 'o\'neil "\\x"', "appeals", None, 1),  # decided it before: not for them
        ("claim", "zoë", "appeals", None, 1),    # not a member
        ("claim", "alice", "appeals", None, 1),  # fresh eyes
        ("claim", "carol", None, 5, 1),          # one named item (the medical one)
        ("tick", dt.timedelta(hours=9)),
        ("claim", "sue", "severe", None, 5),     # a new shift
        ("claim", "zoë", "adult", None, 1),      # non-ASCII ids claim inside the server too
        ("claim", "ünï\tcode 🙂", None, None, 2),
        ("decide", "zoë", "benign"),
    ]
    for reference, path in (("python-desk", "desk"), ("python", "server")):
        python = run(pg_db, reference, seed, steps)
        other = run(pg_db, path, seed, steps)
        assert other[0] == python[0], path
        assert other[1] == python[1], path
    answers = python[0]
    assert [v["queue"] for v in answers[0]] == ["severe", "severe", "severe", "senior", "adult"]
    assert answers[1][0] == "ExposureCapReached"
    assert answers[2][0] == "UnknownReviewer" and answers[3][0] == "UnknownReviewer"
    assert answers[4][0] == "NotEntitled" and answers[5][0] == "NotEntitled"
    assert answers[8] and all(v["queue"] == "severe" for v in answers[8])
    assert answers[8][0]["verdicts_in"] == 1 and answers[8][0]["verdicts"] == []  # no anchoring
    assert answers[13][0] == "NothingToClaim"
    assert answers[15][0]["kind"] == "appeal" and answers[15][0]["appeal_statement"]
    assert answers[16][0]["id"] == 6 and answers[16][0]["queue"] == "medical"
    assert len(answers[18]) == 3
    assert isinstance(answers[19], list) and answers[19][0]["claimed_by"] == "zoë"
    assert isinstance(answers[20], list) and answers[20][0]["claimed_by"] == "ünï\tcode 🙂"
    events = python[1]["audit_event"]
    for who in ('o\'neil "\\x"', "zoë", "ünï\tcode 🙂"):
        assert any(e.actor == who and e.event == "item.claim" for e in events), who
    assert any(e.event == "item.release_second" or e.event == "item.release_first"
               for e in events)
