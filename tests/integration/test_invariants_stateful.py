"""The five invariants under random workflows: a hypothesis state machine drives the real review
service on a real database and, after every step, checks the invariants by SQL over the real
tables.  Refused steps are expected; a broken invariant, an IntegrityError (the service tried
something the schema refuses) or a broken audit chain is not."""

from __future__ import annotations

import datetime as dt
import itertools
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import currently_in_test_context, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

import review.intake as intake_module
from review import audit
from review.db import Database
from review.errors import ReviewError
from review.schema import Action, Base, ReviewItem, UTCDateTime, VerdictRow
from review.service import ReviewService
from review.states import AFTER_APPEAL_WINDOW, REVERSAL_KINDS, ItemStatus
from tests.review_support import ACTIONS, QUEUES, FakeClock, make_config, record

#: reviewer -> (queues, roles); dan is a member of medical and severe without the roles
REVIEWERS: dict[str, tuple[list[str], list[str]]] = {
    "alice": (["adult", "qa", "appeals"], []),
    "bob": (["adult", "qa", "appeals"], []),
    "carol": (["adult", "appeals", "medical"], ["medical"]),
    "dan": (["adult", "medical", "severe"], []),
    "sam": (["severe", "senior", "appeals"], ["senior"]),
    "sue": (["severe", "senior", "appeals"], ["senior"]),
    "sid": (["severe", "senior"], ["senior"]),
    "sky": (["severe", "senior"], ["senior"]),
}
ENTITLED = {
    r: {q for q in queues if QUEUES[q].role is None or QUEUES[q].role in roles}
    for r, (queues, roles) in REVIEWERS.items()
}
SENIORS = sorted(r for r, (_, roles) in REVIEWERS.items() if "senior" in roles)
FRONT_LINE = sorted(set(REVIEWERS) - set(SENIORS))
PROFILES: dict[str, dict[str, Any]] = {
    "adult": dict(outcome="review", queue="adult", proposed=("remove_content",)),
    "adult_hold": dict(outcome="hold", queue="adult", proposed=("remove_content", "suspend")),
    "medical": dict(outcome="review", queue="medical", severity="low", proposed=()),
    "severe": dict(outcome="hold", queue="severe", severity="critical", reviewers_required=2,
                   proposed=ACTIONS["critical"]),
    "qa": dict(outcome="allow", queue="qa", qa=True),
    "allow": dict(outcome="allow", queue=None),
}
SEED_PROFILES = ["adult", "adult_hold", "medical", "qa", "severe"]
#: weighted by repetition: what the model flags is mostly what it feared, most of all in the
#: severe queues, so that the steps of one example reach approvals, executions and appeals
VERDICTS = ["violating"] * 3 + ["benign", "benign_medical", "need_more_context"]
SEVERE_VERDICTS = ["violating"] * 6 + VERDICTS[3:]
CATEGORIES = [("cat.high",), ("cat.high",), ("cat.critical",), ("cat.low",),
              ("cat.high", "cat.low")]
SEVERE_CATEGORIES = [("cat.critical",)] * 12 + CATEGORIES
STEPS = [dt.timedelta(minutes=5), dt.timedelta(minutes=16), dt.timedelta(hours=9),
         dt.timedelta(hours=73), dt.timedelta(hours=73), dt.timedelta(hours=73),
         dt.timedelta(days=181)]
#: steps per example: 20 reached two-person approvals and executed account actions about
#: three times as often as 15 did, for about 1.5 times the time
STEP_COUNT = 20
PAST_PROPOSED = ("approved", "notified", "executed", "reversed")
#: the doors a verdict comes through (issue 16): the reviewer's own (None: `direct:<reviewer>`),
#: or one console's delegate key and one operator account that act for whoever they name
DOORS: list[str | None] = [None, None, None, "key:console", "os:ops@host"]
BENIGN = ("benign", "benign_medical")


def event(value: str) -> None:
    """hypothesis' statistics, also when the scripted test runs the machine by hand."""
    if currently_in_test_context():
        _event(value)


def seed_reviewers(db: Database) -> None:
    svc = ReviewService(make_config(), clock=FakeClock())
    with db.transaction() as s:
        for rid, (queues, roles) in REVIEWERS.items():
            svc.add_reviewer(s, reviewer_id=rid, queues=queues, roles=roles)


# ---- one database per test, emptied for each example ---------------------------------------
class Workbench:
    """A migrated database with the reviewers seeded, reset to that state for each example:
    the work tables emptied, the seeding's audit events kept and the chain's head rewound.
    One engine for the whole run keeps SQLAlchemy's compiled statements warm."""

    KEEP = ("alembic_version", "reviewer", "reviewer_queue", "audit_head", "audit_event")

    def __init__(self, url: str) -> None:
        self.db = Database(url, pool_size=2)
        self.db.upgrade()
        seed_reviewers(self.db)
        with self.db.transaction() as s:
            self.head = s.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
        present = set(inspect(self.db.engine).get_table_names())
        # children before parents, so the foreign keys hold at every statement
        self.wipe = [t.name for t in reversed(Base.metadata.sorted_tables)
                     if t.name in present and t.name not in self.KEEP]

    def fresh(self) -> Database:
        with self.db.transaction() as s:
            for table in self.wipe:
                s.execute(text(f"DELETE FROM {table}"))
            s.execute(text("DELETE FROM audit_event WHERE seq > :q"), {"q": self.head.seq})
            s.execute(text("UPDATE audit_head SET seq = :q, hash = :h WHERE id = 1"),
                      {"q": self.head.seq, "h": self.head.hash})
        return self.db

    def close(self) -> None:
        self.db.dispose()


BACKEND: Workbench | None = None
#: in how many examples each interesting state was reached (the test is not passing trivially)
SEEN: Counter[str] = Counter()
COVERAGE = {
    "executed account action": "SELECT count(*) FROM action WHERE target = 'account' "
                               "AND status IN ('executed', 'reversed') AND approver_1 IS NOT NULL",
    "two-person approval": "SELECT count(*) FROM action WHERE irreversible "
                           "AND status IN ('approved', 'notified', 'executed', 'reversed')",
    "escalation": "SELECT count(*) FROM review_item WHERE kind = 'escalation'",
    "appeal decided": "SELECT count(*) FROM appeal WHERE status <> 'open'",
    "reversal executed": "SELECT count(*) FROM action WHERE reverses_action_id IS NOT NULL "
                         "AND status = 'executed'",
    "context re-review": "SELECT count(*) FROM review_item WHERE kind = 'context'",
    "two-person approval with a delegate": (
        "SELECT count(*) FROM action a JOIN verdict v ON v.id IN (a.approver_1_verdict_id, "
        "a.approver_2_verdict_id) WHERE a.irreversible AND v.via_delegate "
        "AND a.status IN ('approved', 'notified', 'executed', 'reversed')"),
}


class ReviewWorkflow(RuleBasedStateMachine):
    decisions = Bundle("decisions")

    def __init__(self) -> None:
        super().__init__()
        assert BACKEND is not None
        self.db = BACKEND.fresh()
        self.clock = FakeClock()
        self.svc = ReviewService(make_config(), clock=self.clock)
        # decision and upload ids are uuid4s: random ids would order rows differently when
        # hypothesis replays an example (FlakyStrategyDefinition).  The tables are emptied for
        # each example, so ids counted from 1 cannot collide.
        ids = itertools.count(1)
        intake_module.uuid = types.SimpleNamespace(  # type: ignore[assignment]
            uuid4=lambda: uuid.UUID(int=next(ids))
        )
        self.recorded: dict[int, tuple[str, str]] = {}  # upload n -> account, decision id
        self.state: dict[str, int] = {}
        #: a step committed a transaction since the invariants were last checked
        self.dirty = True

    def _refresh(self, s: Session) -> None:
        """What the next step can act on; the preconditions read it, so that few steps are
        spent on a rule with nothing to do."""
        self.state = dict(s.execute(STATE_SQL).mappings().one())

    def _tx(self, label: str, fn: Callable[[Session], Any]) -> Any:
        """One step is one transaction; a refusal rolls it back, as a route or a job would."""
        try:
            with self.db.transaction() as s:
                out = fn(s)
        except ReviewError as e:
            event(f"{label} refused: {e.code}")
            if e.code == "review.same_credential":
                SEEN["one credential refused a second verdict"] += 1
            return None
        self.dirty = True
        return out

    def _record(self, profile: str, account: str) -> str:
        n = len(self.recorded) + 1
        r = self._tx("record", lambda s: record(self.svc, s, n, account=account,
                                                **PROFILES[profile]))
        assert r is not None and r.created
        self.recorded[n] = (account, r.decision_id)
        return str(r.decision_id)

    # ---- steps -------------------------------------------------------------------------
    @initialize(target=decisions,
                profiles=st.lists(st.sampled_from(SEED_PROFILES), min_size=1, max_size=2))
    def seed_uploads(self, profiles: list[str]) -> Any:
        """Work waits in the queues from the start (a severe item among it), so that one
        example reaches the deep states: two-person approvals, executions, appeals."""
        out = multiple(*(self._record(p, "acct-1") for p in ["severe", *profiles]))
        with self.db.transaction() as s:
            self._refresh(s)
        return out

    @rule(target=decisions, profile=st.sampled_from(sorted(PROFILES)),
          account=st.sampled_from(["acct-1", "acct-2"]), retry=st.booleans())
    def record_upload(self, profile: str, account: str, retry: bool) -> Any:
        if not retry:
            return self._record(profile, account)
        # a retry of an earlier upload, even routed otherwise, returns the stored decision
        n = len(self.recorded)
        account, decision_id = self.recorded[n]
        r = self._tx("record again", lambda s: record(self.svc, s, n, account=account,
                                                      **PROFILES[profile]))
        assert r is not None and not r.created and r.decision_id == decision_id
        return multiple()

    def _verdict(self, data: st.DataObject, s: Session, item: ReviewItem) -> tuple[str, Any]:
        earlier = s.execute(
            select(VerdictRow).where(VerdictRow.item_id == item.id,
                                     VerdictRow.verdict != "need_more_context")
        ).scalars().first()
        if earlier is not None and data.draw(st.sampled_from([True, True, False]), "agree"):
            return earlier.verdict, tuple(earlier.categories)
        severe = item.queue in ("severe", "senior")
        verdict = data.draw(st.sampled_from(SEVERE_VERDICTS if severe else VERDICTS), "verdict")
        cats = data.draw(st.sampled_from(SEVERE_CATEGORIES if severe else CATEGORIES),
                         label="categories")
        return verdict, cats if verdict == "violating" else ()

    def _decide(self, data: st.DataObject, s: Session, item_id: int, reviewer: str) -> None:
        item = s.get(ReviewItem, item_id)
        assert item is not None
        verdict, cats = self._verdict(data, s, item)
        door = data.draw(st.sampled_from(DOORS), label="credential")
        res = self.svc.decide(s, item_id=item_id, reviewer_id=reviewer, verdict=verdict,
                              categories=cats, credential=door, delegate=door is not None)
        event(f"decide -> {res.status}")

    @precondition(lambda self: self.state["open"] > 0)
    @rule(reviewer=st.sampled_from(sorted(REVIEWERS)),
          queue=st.none() | st.sampled_from(sorted(QUEUES)), then_decide=st.booleans(),
          count=st.sampled_from([None, None, 1, 3]), data=st.data())
    def claim(self, reviewer: str, queue: str | None, then_decide: bool, count: int | None,
              data: st.DataObject) -> None:
        """One item, or a reviewer's tool leasing `count` at once (then deciding the first)."""
        def step(s: Session) -> None:
            if count is None:
                view = self.svc.claim(s, reviewer_id=reviewer, queue=queue)
            else:
                views = self.svc.claim_many(s, reviewer_id=reviewer, queue=queue, limit=count)
                assert 1 <= len(views) <= count and len({v.id for v in views}) == len(views)
                event(f"claim batch of {len(views)}")
                if len(views) > 1:
                    SEEN["claim batch of several"] += 1
                view = views[0]
            if then_decide:
                self._decide(data, s, view.id, reviewer)

        self._tx("claim", step)

    def _work(self, label: str, reviewer: str, data: st.DataObject) -> None:
        self._tx(label, lambda s: self._decide(
            data, s, self.svc.claim(s, reviewer_id=reviewer).id, reviewer))

    @precondition(lambda self: self.state["open"] > 0)
    @rule(reviewer=st.sampled_from(FRONT_LINE), data=st.data())
    def work_queue(self, reviewer: str, data: st.DataObject) -> None:
        """A front-line reviewer takes the next item in their queues and decides it."""
        self._work("work queue", reviewer, data)

    @precondition(lambda self: self.state["open_senior"] > 0)
    @rule(reviewer=st.sampled_from(SENIORS), data=st.data())
    def senior_review(self, reviewer: str, data: st.DataObject) -> None:
        """The severe and senior queues are worked by their own people."""
        self._work("senior review", reviewer, data)

    @precondition(lambda self: self.state["claimed"] > 0)
    @rule(data=st.data())
    def decide(self, data: st.DataObject) -> None:
        def step(s: Session) -> None:
            claimed = s.execute(select(ReviewItem.id, ReviewItem.claimed_by).where(
                ReviewItem.status == ItemStatus.CLAIMED).order_by(ReviewItem.id)).all()
            if claimed:
                item_id, claimant = data.draw(st.sampled_from(claimed), label="item")
                # mostly the claimant; sometimes someone else, who must be refused
                who = data.draw(st.sampled_from([claimant] * 3 + sorted(REVIEWERS)), "who")
                self._decide(data, s, item_id, who)

        self._tx("decide", step)

    @precondition(lambda self: self.state["claimed"] > 0)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        def step(s: Session) -> None:
            claimed = s.execute(select(ReviewItem.id, ReviewItem.claimed_by).where(
                ReviewItem.status == ItemStatus.CLAIMED).order_by(ReviewItem.id)).all()
            if claimed:
                item_id, who = data.draw(st.sampled_from(claimed), label="item")
                assert who is not None  # claimed rows carry their claimant (a CHECK says so)
                self.svc.release(s, item_id=item_id, reviewer_id=who)

        self._tx("release", step)

    @rule(by=st.sampled_from(STEPS), scheduler=st.sampled_from([True, True, False]))
    def advance_clock(self, by: dt.timedelta, scheduler: bool) -> None:
        """Leases expire, exposure windows and notice periods pass, the appeal window closes;
        the action executor, a scheduled job, may run as time passes."""
        self.clock.advance(seconds=by.total_seconds())
        if scheduler:
            self.execute_due()

    @precondition(lambda self: self.state["reviewed"] > 0)
    @rule(decision=decisions, data=st.data())
    def appeal(self, decision: str, data: st.DataObject) -> None:
        """The user appeals: mostly a decision a person closed, else any (often refused)."""
        def step(s: Session) -> int:
            chosen = decision
            reviewed = s.execute(REVIEWED_SQL).scalars().all()
            if reviewed and data.draw(st.sampled_from([True, True, False]), "a reviewed one"):
                chosen = data.draw(st.sampled_from(reviewed), label="decision")
            return self.svc.appeal(s, decision_id=chosen, statement="look again")

        self._tx("appeal", step)

    @precondition(lambda self: self.state["waiting_reply"] > 0)
    @rule(decision=decisions)
    def provide_context(self, decision: str) -> None:
        self._tx("context", lambda s: self.svc.provide_context(
            s, decision_id=decision, statement="it is medical", context={"medical": True}))

    def execute_due(self) -> None:
        for a in self._tx("execute_due", lambda s: self.svc.execute_due(s)) or ():
            event(f"executed {a.target}")

    @precondition(lambda self: self.state["actions"] > 0)
    @rule(direct=st.booleans(), data=st.data())
    def execute(self, direct: bool, data: st.DataObject) -> None:
        """The executor runs what is due, or somebody pushes one random action through
        `execute` (refused unless approved, due and not under review)."""
        if not direct:
            self.execute_due()
            return

        def step(s: Session) -> None:
            q = select(Action.id).order_by(Action.id)
            if data.draw(st.booleans(), label="only approved ones"):
                q = q.where(Action.status.in_(["approved", "notified"]))
            ids = s.execute(q).scalars().all()
            if ids:
                a = self.svc.execute(s, action_id=data.draw(st.sampled_from(ids)), actor="rogue")
                event(f"direct execute of {a.target} action allowed")

        self._tx("execute", step)

    # ---- invariants, by SQL over the real tables, after every step ------------------------
    @invariant()
    def invariants_hold(self) -> None:
        """After every step that committed a transaction: a refused step rolled back, and
        the clock alone changes no row (it only moves forward), so the state already checked
        is the state there is."""
        if not self.dirty:
            return
        self.dirty = False
        with self.db.transaction() as s:
            check_invariants(s, now=self.clock(), appeal_window=self.svc.config.appeal_window)
            self._refresh(s)

    def teardown(self) -> None:
        intake_module.uuid = uuid  # type: ignore[assignment]
        with self.db.transaction() as s:
            for name, sql in COVERAGE.items():
                if s.execute(text(sql)).scalar_one():
                    SEEN[name] += 1
                    event(f"reached: {name}")
            n = s.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
        # a chain that verified after every step still catches one tampered row (one this
        # example wrote: the seeding's events are kept for the next example)
        assert BACKEND is not None and n > BACKEND.head.seq
        seq = (BACKEND.head.seq + n) // 2 + 1
        with self.db.transaction() as s:
            s.execute(text("UPDATE audit_event SET actor = 'tampered' WHERE seq = :q"),
                      {"q": seq})
        with self.db.transaction() as s:
            report = audit.verify(s)
        assert not report.ok and report.at_seq == seq, report


STATE_SQL = text(
    "SELECT (SELECT count(*) FROM review_item WHERE status IN ('pending', 'awaiting_second')) "
    "AS open, (SELECT count(*) FROM review_item WHERE status IN ('pending', 'awaiting_second') "
    "AND queue IN ('severe', 'senior')) AS open_senior, "
    "(SELECT count(*) FROM review_item WHERE status = 'claimed') AS claimed, "
    "(SELECT count(*) FROM action WHERE status <> 'cancelled') AS acted, "
    "(SELECT count(*) FROM action WHERE status = 'notified') + (SELECT count(*) FROM "
    "review_item WHERE status = 'awaiting_context') AS waiting_reply, "
    "(SELECT count(*) FROM action WHERE status IN ('approved', 'notified')) AS approved, "
    "(SELECT count(*) FROM action) AS actions, "
    "(SELECT count(*) FROM review_item WHERE kind <> 'qa' AND status IN ('decided', "
    "'escalated')) AS reviewed")
#: decisions a person closed an item of: what users appeal
REVIEWED_SQL = text(
    "SELECT DISTINCT i.decision_id FROM review_item i WHERE i.kind <> 'qa' "
    "AND i.status IN ('decided', 'escalated') ORDER BY i.decision_id")

ACTIONS_SQL = text(
    "SELECT a.id, a.kind, a.target, a.status, a.irreversible, a.urgent, a.item_id, "
    "a.approver_1, a.approver_2, a.reverses_action_id, a.not_before, a.executed_at, "
    "d.created_at AS decided_at, d.outcome, i.kind AS item_kind, "
    "v1.reviewer_id AS r1, v1.verdict AS verdict_1, v1.item_id AS item_1, i1.queue AS queue_1, "
    "v2.reviewer_id AS r2, v2.verdict AS verdict_2, v2.item_id AS item_2, i2.queue AS queue_2, "
    "v1.credential AS c1, v2.credential AS c2 "
    "FROM action a JOIN decision d ON d.id = a.decision_id "
    "LEFT JOIN review_item i ON i.id = a.item_id "
    "LEFT JOIN verdict v1 ON v1.id = a.approver_1_verdict_id "
    "LEFT JOIN review_item i1 ON i1.id = v1.item_id "
    "LEFT JOIN verdict v2 ON v2.id = a.approver_2_verdict_id "
    "LEFT JOIN review_item i2 ON i2.id = v2.item_id ORDER BY a.id"
).columns(not_before=UTCDateTime(), executed_at=UTCDateTime(), decided_at=UTCDateTime())


def check_invariants(s: Session, *, now: dt.datetime, appeal_window: dt.timedelta) -> None:
    # invariant 1, as the brief states it: nothing past `proposed` without a person, except
    # the automated content hold
    unapproved = s.execute(text(
        "SELECT id, kind, status FROM action WHERE status IN "
        "('approved', 'notified', 'executed', 'reversed') AND approver_1 IS NULL "
        "AND kind <> 'hold_content'")).all()
    assert unapproved == [], unapproved

    rows = s.execute(ACTIONS_SQL).mappings().all()
    executed_reversals = {a["reverses_action_id"] for a in rows
                          if a["reverses_action_id"] and a["status"] == "executed"}
    for a in rows:
        where = dict(a)
        past = a["status"] in PAST_PROPOSED
        # an approver is always a verdict by that very reviewer (composite key + check)
        assert (a["r1"], a["r2"]) == (a["approver_1"], a["approver_2"]), where
        if past and a["target"] == "account":
            # a person in the queue approved it: a violating verdict for an enforcement, a
            # benign one for the reversal that undoes one
            assert a["r1"] in REVIEWERS and a["queue_1"] in ENTITLED[a["r1"]], where
            expected = BENIGN if a["kind"] in REVERSAL_KINDS else ("violating",)
            assert a["verdict_1"] in expected, where
            assert a["r2"] is None or a["verdict_2"] in expected, where
        if past and a["irreversible"]:
            # invariant 2: two distinct people, each violating, on the item that approved it
            assert a["r1"] is not None and a["r2"] is not None and a["r1"] != a["r2"], where
            # ...through two distinct credentials (issue 16): one door is never two people
            assert a["c1"] is not None and a["c2"] is not None and a["c1"] != a["c2"], where
            assert a["verdict_1"] == a["verdict_2"] == "violating", where
            assert a["item_1"] == a["item_2"] == a["item_id"], where
            assert a["queue_2"] in ENTITLED[a["r2"]], where
        if a["status"] in ("executed", "reversed"):
            ran = a["executed_at"]
            assert ran is not None and ran <= now, where
            # nothing runs before its time: notice, and the appeal window for erasure
            assert a["not_before"] is None or ran >= a["not_before"], where
            if a["kind"] in AFTER_APPEAL_WINDOW:
                assert ran >= a["decided_at"] + appeal_window, where
            if a["target"] == "account" and not a["urgent"] and a["kind"] not in REVERSAL_KINDS:
                assert a["not_before"] is not None, f"ran without a notice: {where}"
        if a["status"] == "reversed":
            assert a["id"] in executed_reversals, where
        # QA never leads to enforcement; nothing at all is done to an allowed upload
        assert a["item_kind"] != "qa" and a["outcome"] != "allow", where

    # invariant 4: every routed upload reaches exactly one initial review; allow reaches none
    initial = s.execute(text(
        "SELECT d.id, d.outcome, (SELECT count(*) FROM review_item i WHERE i.decision_id = d.id "
        "AND i.kind = 'initial') AS n FROM decision d")).all()
    assert all(n == (0 if outcome == "allow" else 1) for _, outcome, n in initial), initial

    # invariant 5: reviewers hold and decide items only in queues they are entitled to
    held = s.execute(text(
        "SELECT 'claim', id, queue, claimed_by FROM review_item WHERE claimed_by IS NOT NULL "
        "UNION ALL SELECT 'verdict', v.id, i.queue, v.reviewer_id FROM verdict v "
        "JOIN review_item i ON i.id = v.item_id")).all()
    assert all(queue in ENTITLED[who] for _, _, queue, who in held), held
    # appeals and escalations: never someone who gave a verdict on the decision before
    again = s.execute(text(
        "SELECT v.id, v.reviewer_id, i.kind FROM verdict v JOIN review_item i ON i.id = v.item_id "
        "JOIN review_item i2 ON i2.decision_id = i.decision_id AND i2.id <> i.id "
        "JOIN verdict v2 ON v2.item_id = i2.id AND v2.reviewer_id = v.reviewer_id "
        "AND v2.id < v.id WHERE i.kind IN ('appeal', 'escalation')")).all()
    assert again == [], again

    # issue 16: no credential ever supplied two verdicts of one item
    shared = s.execute(text(
        "SELECT item_id, credential, count(*) FROM verdict GROUP BY item_id, credential "
        "HAVING count(*) > 1")).all()
    assert shared == [], shared

    # invariant 3, the record: the audit chain verifies after every step
    report = audit.verify(s)
    assert report.ok, report


def _run(bench: Workbench, **kw: Any) -> Counter[str]:
    """One hypothesis run of the machine on `bench`; in how many examples each state was
    reached."""
    global BACKEND
    BACKEND = bench
    SEEN.clear()
    try:
        run_state_machine_as_test(ReviewWorkflow,
                                  settings=settings(stateful_step_count=STEP_COUNT, **kw))
    finally:
        BACKEND = None
    return Counter(SEEN)


@pytest.fixture
def sqlite_bench(sqlite_url: str) -> Iterator[Workbench]:
    bench = Workbench(sqlite_url)
    yield bench
    bench.close()


#: what the generated runs must reach, or the invariants were checked on nothing much
MUST_REACH = ("executed account action", "two-person approval", "escalation", "appeal decided",
              "claim batch of several")


def test_invariants_hold_under_random_workflows_sqlite(sqlite_bench: Workbench) -> None:
    seen = _run(sqlite_bench)
    # Not trivially passing: the runs must reach what the invariants are about.  hypothesis
    # mutates earlier examples (swarm flags included), so one run's examples are correlated
    # and an unlucky run can miss a state; then more examples are generated, a bounded number
    # of times: a generator that cannot reach a state still fails.
    for _ in range(3):
        if all(seen[k] for k in MUST_REACH):
            break
        seen += _run(sqlite_bench, max_examples=50)
    assert all(seen[k] for k in MUST_REACH), seen


@pytest.mark.postgres
def test_invariants_hold_under_random_workflows_postgres(pg_url: str) -> None:
    # the same machine on PostgreSQL, with fewer examples (PostgreSQL steps cost more); what
    # the runs reach is asserted on SQLite, the invariants are checked here all the same
    bench = Workbench(pg_url)
    try:
        _run(bench, max_examples=max(10, settings().max_examples // 10))
    finally:
        bench.close()


def test_a_scripted_workflow_reaches_every_covered_state(sqlite_bench: Workbench) -> None:
    """The machine's own steps in a fixed order, so the coverage probes are known to work:
    two people approve a report, an account action runs after its notice, a disagreement
    escalates, the user's context reverses what ran."""
    global BACKEND
    BACKEND = sqlite_bench
    SEEN.clear()
    m = ReviewWorkflow()

    def check() -> None:
        m.dirty = True  # the script's own transactions do not go through the machine's _tx
        m.invariants_hold()

    try:
        severe = m._record("severe", "acct-1")
        m._record("adult", "acct-2")
        m._record("severe", "acct-2")
        with m.db.transaction() as s:
            # sam's verdict through a console's delegate key, sue's through her own
            for who, verdict, cats, door in [("sam", "violating", ["cat.critical"], "key:console"),
                                             ("sue", "violating", ["cat.critical"], None),
                                             ("bob", "violating", ["cat.high"], None),
                                             ("sid", "violating", ["cat.critical"], None),
                                             ("sky", "benign", [], None)]:
                view = m.svc.claim(s, reviewer_id=who)
                m.svc.decide(s, item_id=view.id, reviewer_id=who, verdict=verdict,
                             categories=cats, credential=door, delegate=door is not None)
        check()
        m.advance_clock(dt.timedelta(hours=73), scheduler=False)
        m.execute_due()
        check()
        m.provide_context(severe)
        with m.db.transaction() as s:
            view = m.svc.claim(s, reviewer_id="alice", queue="appeals")
            m.svc.decide(s, item_id=view.id, reviewer_id="alice", verdict="benign")
        m.execute_due()
        check()
        # one console's key for both seniors of a fresh severe item: the second is refused
        fresh = m._record("severe", "acct-3")
        with m.db.transaction() as s:
            item = s.execute(select(ReviewItem.id).where(ReviewItem.decision_id == fresh)
                             ).scalar_one()
        for who in ("sid", "sky"):
            def step(s: Session, who: str = who) -> None:
                m.svc.claim(s, reviewer_id=who, item_id=item)
                m.svc.decide(s, item_id=item, reviewer_id=who, verdict="violating",
                             categories=("cat.critical",), credential="key:console",
                             delegate=True)
            m._tx("console", step)
        check()
        with m.db.transaction() as s:
            reached = {k: s.execute(text(q)).scalar_one() for k, q in COVERAGE.items()}
            assert s.execute(select(VerdictRow.reviewer_id).where(VerdictRow.item_id == item)
                             ).scalars().all() == ["sid"]
    finally:
        m.teardown()
        BACKEND = None
    assert all(reached.values()), reached
    assert all(SEEN[k] == 1 for k in COVERAGE), SEEN
    assert SEEN["one credential refused a second verdict"] == 1, SEEN
