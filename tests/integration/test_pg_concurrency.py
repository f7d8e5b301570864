"""Concurrent reviewers on PostgreSQL: `FOR UPDATE SKIP LOCKED` hands each item to exactly one
claimer, expired leases return what a vanished reviewer held, and a reviewer process killed
between its claim and its verdict loses nothing."""

from __future__ import annotations

import datetime as dt
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from review import audit
from review.claims.local import PICK
from review.db import Database
from review.errors import NothingToClaim
from review.schema import Content, Decision, ReviewItem, Upload
from review.service import QueueRules, ReviewConfig, ReviewService
from review.states import ItemKind
from tests.review_support import FakeClock, make_config, sha

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 400
N_WORKERS = 16
REVIEWERS = [f"r{i:02d}" for i in range(N_WORKERS)]
QUEUES = {"bulk": QueueRules("bulk", dt.timedelta(hours=24))}


def config(**kw: object) -> ReviewConfig:
    return make_config(queues=QUEUES, **kw)


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    db.upgrade()
    svc = ReviewService(config(), clock=FakeClock())
    with db.transaction() as s:
        for r in REVIEWERS:
            svc.add_reviewer(s, reviewer_id=r, queues=["bulk"])
    yield db
    db.dispose()


def seed_items(svc: ReviewService, db: Database, n: int) -> None:
    """n routed uploads waiting in the bulk queue.  Contents, uploads and decisions are written
    as rows in bulk; each item goes through the service's own item creation (and its audit
    event).  The claims are under test here; recording one by one would dominate the run."""
    now = svc.clock()
    with db.transaction() as s:
        s.add_all([Content(sha256=sha(i), mime="image/jpeg", width=10, height=10, size_bytes=100,
                           created_at=now) for i in range(n)])
        s.flush()
        s.add_all([Upload(id=f"u-{i}", content_sha256=sha(i), account_id=f"acct-{i % 7}",
                          external_id=f"up-{i}", source="test", context={}, received_at=now)
                   for i in range(n)])
        s.flush()
        s.add_all([Decision(id=f"d-{i}", upload_id=f"u-{i}", outcome="review",
                            model_version="m@sha256:0", policy_version="p-1", scores={},
                            reasons={}, queue="bulk", created_at=now) for i in range(n)])
        s.flush()
        for i in range(n):
            svc.core.new_item(s, decision_id=f"d-{i}", kind=ItemKind.INITIAL, queue="bulk",
                          severity="high", priority=100 + i % 3, reviewers_required=1,
                          account_id=f"acct-{i % 7}", content_sha256=sha(i))


def run_workers(url: str, work: Callable[[str, Database], None]) -> None:
    """N_WORKERS threads, each with its own engine, started together; any error fails."""
    start = threading.Barrier(N_WORKERS)
    errors: list[BaseException] = []

    def worker(reviewer: str) -> None:
        db = Database(url, pool_size=1)
        try:
            start.wait()
            work(reviewer, db)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            db.dispose()

    threads = [threading.Thread(target=worker, args=(r,)) for r in REVIEWERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not [t for t in threads if t.is_alive()], "a worker hung"
    assert errors == [], errors[:3]


def test_concurrent_claimers_never_share_and_never_lose_an_item(
    pg: Database, pg_url: str
) -> None:
    clock = FakeClock()
    svc = ReviewService(config(), clock=clock)
    seed_items(svc, pg, N_ITEMS)
    claims: list[tuple[str, int, int]] = []  # (reviewer, item, phase); list.append is atomic
    phase = 1

    def abandon(item_id: int) -> bool:  # the reviewer walks away: the lease must bring it back
        return phase == 1 and item_id % 10 == 0

    def work(reviewer: str, db: Database) -> None:
        while True:
            try:
                with db.transaction() as s:
                    view = svc.claim(s, reviewer_id=reviewer)
            except NothingToClaim:
                return
            claims.append((reviewer, view.id, phase))
            if abandon(view.id):
                continue
            with db.transaction() as s:
                svc.decide(s, item_id=view.id, reviewer_id=reviewer, verdict="benign")

    run_workers(pg_url, work)
    first = Counter(item for _, item, _ in claims)
    abandoned = {i for i in first if i % 10 == 0}
    assert len(first) == N_ITEMS and set(first.values()) == {1}  # once each, none lost
    assert len(abandoned) == N_ITEMS // 10
    assert len({r for r, _, _ in claims}) > 1  # they really did work side by side

    clock.advance(minutes=16)  # the abandoned leases run out; the claims sweep them back
    phase = 2
    run_workers(pg_url, work)
    second = Counter(item for _, item, ph in claims if ph == 2)
    assert set(second) == abandoned and set(second.values()) == {1}

    with pg.transaction() as s:
        statuses: dict[str, int] = dict(s.execute(text(
            "SELECT status, count(*) FROM review_item GROUP BY status")).all())
        per_item = s.execute(text(
            "SELECT count(*), count(DISTINCT item_id) FROM verdict")).one()
        claim_events = Counter(int(x) for x in s.execute(text(
            "SELECT subject_id FROM audit_event WHERE event = 'item.claim'")).scalars())
        expired = s.execute(text(
            "SELECT subject_id, actor, data FROM audit_event "
            "WHERE event = 'item.release_first'")).all()
        actors = {(r[0], int(r[1])) for r in s.execute(text(
            "SELECT actor, subject_id FROM audit_event WHERE event = 'item.claim'")).all()}
        chain = audit.verify(s)
    assert statuses == {"decided": N_ITEMS}
    assert tuple(per_item) == (N_ITEMS, N_ITEMS)  # one verdict per item: nothing decided twice
    # the audit log tells the same story as the claims list, and its chain did not fork
    assert claim_events == Counter(item for _, item, _ in claims)
    assert {int(e[0]) for e in expired} == abandoned and len(expired) == len(abandoned)
    assert all(e[1] == "system:lookfirst" for e in expired)
    assert actors == {(r, i) for r, i, _ in claims}
    assert chain.ok, chain


CRASHING_REVIEWER = """
import datetime as dt, sys, time
from review.db import Database
from review.schema import Content, Decision, Upload
from review.service import QueueRules, ReviewConfig, ReviewService
from review.states import ItemKind
from tests.review_support import make_config, sha
queues = {"bulk": QueueRules("bulk", dt.timedelta(hours=24))}
svc = ReviewService(make_config(queues=queues, lease=dt.timedelta(seconds=float(sys.argv[2]))))
db = Database(sys.argv[1])
with db.transaction() as s:
    view = svc.claim(s, reviewer_id="r00")
print(view.id, view.lease_expires_at.timestamp(), flush=True)
time.sleep(600)  # reviewing... until the process is killed
"""


def test_a_reviewer_killed_between_claim_and_verdict_loses_nothing(
    pg: Database, pg_url: str
) -> None:
    lease = 2.0
    svc = ReviewService(config(lease=dt.timedelta(seconds=lease)))
    seed_items(svc, pg, 1)
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_REVIEWER, pg_url, str(lease)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline() if ready else ""
            proc.send_signal(signal.SIGKILL)  # mid-review: no verdict, no release
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert line, f"the reviewer process did not claim: {proc.stderr.read()[-2000:]}"
    item_id, until = line.split()
    assert proc.returncode == -signal.SIGKILL
    with pg.transaction() as s:
        row = s.execute(text("SELECT status, claimed_by FROM review_item")).one()
        assert tuple(row) == ("claimed", "r00")  # the claim was committed before the kill
    if time.time() < float(until) - 0.5:  # still leased: nobody else may take it
        with pytest.raises(NothingToClaim), pg.transaction() as s:
            svc.claim(s, reviewer_id="r01")
    time.sleep(max(0.0, float(until) - time.time()) + 0.2)
    with pg.transaction() as s:
        view = svc.claim(s, reviewer_id="r01")
        assert view.id == int(item_id)
        svc.decide(s, item_id=view.id, reviewer_id="r01", verdict="benign")
    with pg.transaction() as s:
        item = s.execute(text("SELECT status, resolution FROM review_item")).one()
        verdicts = s.execute(text("SELECT reviewer_id FROM verdict")).scalars().all()
        released = s.execute(text(
            "SELECT actor, data FROM audit_event WHERE event = 'item.release_first' "
            "AND subject_id = :i"), {"i": item_id}).all()
        chain = audit.verify(s)
    assert tuple(item) == ("decided", "benign") and verdicts == ["r01"]
    assert len(released) == 1 and released[0][0] == "system:lookfirst"
    assert chain.ok, chain


def test_concurrent_batch_claimers_never_share_and_never_lose_an_item(
    pg: Database, pg_url: str
) -> None:
    """The same with each claimer leasing up to 7 items per transaction (a prefetching tool)."""
    svc = ReviewService(config(), clock=FakeClock())
    seed_items(svc, pg, N_ITEMS)
    claims: list[tuple[str, int]] = []
    batches: list[int] = []

    def work(reviewer: str, db: Database) -> None:
        while True:
            try:
                with db.transaction() as s:
                    views = svc.claim_many(s, reviewer_id=reviewer, limit=7)
            except NothingToClaim:
                return
            batches.append(len(views))
            claims.extend((reviewer, v.id) for v in views)

    run_workers(pg_url, work)
    per_item = Counter(item for _, item in claims)
    assert len(per_item) == N_ITEMS and set(per_item.values()) == {1}
    assert max(batches) == 7 and len({r for r, _ in claims}) > 1
    with pg.transaction() as s:
        leased = dict(s.execute(text(
            "SELECT claimed_by, count(*) FROM review_item WHERE status = 'claimed' "
            "GROUP BY claimed_by")).all())
        events = s.execute(text(
            "SELECT actor, subject_id FROM audit_event WHERE event = 'item.claim'")).all()
        chain = audit.verify(s)
    assert leased == dict(Counter(r for r, _ in claims))
    assert sorted((a, int(i)) for a, i in events) == sorted(claims)  # one event per item
    assert chain.ok, chain
    with pg.transaction() as s:  # side by side, the claimers linked to several chains
        assert s.execute(text("SELECT count(DISTINCT chain) FROM audit_event")).scalar_one() > 1


def _explain(pg: Database, statement: Any, params: dict[str, Any], *, generic: bool) -> str:
    """PostgreSQL's plan for a statement as the service sends it.  `generic`: the plan a
    prepared statement settles on after its first runs (parameters unknown to the planner)."""
    with pg.engine.connect() as c:
        expanded = statement.compile(dialect=c.dialect).construct_expanded_state(params)
        values = expanded.parameters
        names: list[str] = []

        def positional(m: re.Match[str]) -> str:
            if m.group(1) not in names:
                names.append(m.group(1))
            return f"${names.index(m.group(1)) + 1}"

        sql = re.sub(r"%\((\w+)\)s", positional, expanded.statement)
        args = ", ".join(
            f"{int(values[n])}" if isinstance(values[n], int) else f"'{values[n]}'" for n in names
        )
        c.exec_driver_sql(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'auto'}")
        c.exec_driver_sql(f"PREPARE pick AS {sql}")
        plan = "\n".join(r[0] for r in c.exec_driver_sql(f"EXPLAIN EXECUTE pick({args})"))
        c.exec_driver_sql("DEALLOCATE pick")
        return plan


@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
def test_a_claim_reads_the_queue_head_from_the_partial_index_without_sorting_the_queue(
    pg: Database, generic: bool
) -> None:
    """With 3,000 items waiting, the claim's pick is an index scan of ix_review_item_claimable
    that stops at the first rows; no Sort of the queue (which grew with the queue: 2.4 ms at
    2,000 items before the index).  Control: the same plan question for a statement that
    orders by a column the index does not hold does sort."""
    svc = ReviewService(config(), clock=FakeClock())
    seed_items(svc, pg, 3000)
    with pg.engine.connect() as c:
        c.exec_driver_sql("ANALYZE review_item")
        c.commit()
    params = {"queue": "bulk", "reviewer": "r00", "lim": 1}
    plan = _explain(pg, PICK, params, generic=generic)
    assert "ix_review_item_claimable" in plan and "Sort" not in plan, plan
    control = _explain(pg, PICK.order_by(None).order_by(ReviewItem.severity), params,
                       generic=generic)
    assert "Sort" in control, control
