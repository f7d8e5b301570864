"""The transactional outbox against a platform receiver on 127.0.0.1 that fails, hangs past the
client's timeout and answers twice at random: every message has exactly one effect at the
receiver (by idempotency key), none is lost, dead letters stay visible, a forged signature
counts for nothing, and neither two concurrent workers nor a worker that died mid-delivery
ever doubles an effect.  Runs on SQLite and on PostgreSQL (the `db` fixture)."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import httpx
import pytest
from sqlalchemy import func, select

from pipeline.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, sign
from review.db import Database
from review.outbox import (
    DELIVERED,
    INTERNAL_TOPIC_PREFIX,
    DeliveryPolicy,
    DeliveryReport,
    Failed,
    Message,
    OutboxWorker,
    SinkResult,
    enqueue,
    list_rows,
    requeue_dead,
)
from review.schema import Outbox
from review.service import ReviewService
from tests.integration.flaky_receiver import Faults, FlakyReceiver
from tests.review_support import FakeClock, make_config, record, seed_reviewers

SECRET = "webhook-secret-for-tests"
#: short delays: the fake clock jumps past them; the real one waits at most a second or two
POLICY = DeliveryPolicy(max_attempts=8, base_delay=dt.timedelta(seconds=1),
                        max_delay=dt.timedelta(seconds=8), visibility=dt.timedelta(seconds=30))
CLIENT_TIMEOUT_S = 0.25
HANG_S = 0.5  # longer than the client waits: the sender sees a timeout, the effect happens later


# ---- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[FlakyReceiver]:
    r = FlakyReceiver(secret=SECRET, seed=20261125).start()
    try:
        yield r
    finally:
        r.stop()


def make_worker(db: Database, receiver: FlakyReceiver, *,
                clock: Callable[[], dt.datetime] | None, policy: DeliveryPolicy = POLICY,
                secret: str = SECRET, seed: int = 7) -> OutboxWorker:
    sink = WebhookSink(url=receiver.url, secret=secret, timeout_s=CLIENT_TIMEOUT_S, clock=clock)
    return OutboxWorker(db, sink, policy=policy, clock=clock, rng=random.Random(seed))


def produce_through_flows(db: Database, svc: ReviewService, *, holds: int, reviews: int,
                          decided: int, direct: int) -> int:
    """Outbox rows written by real service flows, each in its change's own transaction:
    scored decisions, executed automatic holds, reviewer verdicts (content removals executed,
    suspensions noticed), plus some written directly through the outbox's `enqueue`."""
    with db.transaction() as s:
        seed_reviewers(svc, s)
    with db.transaction() as s:
        for i in range(holds):
            record(svc, s, f"h{i}", outcome="hold", account=f"acct-{i % 7}")
        for i in range(reviews):
            record(svc, s, f"r{i}", account=f"acct-{i % 5}")
    for i in range(decided):
        with db.transaction() as s:
            view = svc.claim(s, reviewer_id="alice", queue="adult")
            svc.decide(s, item_id=view.id, reviewer_id="alice", verdict="violating",
                       categories=["cat.low" if i % 2 else "cat.high"])
    with db.transaction() as s:
        executed = svc.execute_due(s, actor="test", limit=decided * 2 + 10)
        assert executed, "the verdicts approved content removals that are due now"
    with db.transaction() as s:
        for i in range(direct):
            enqueue(s, topic="test.direct", key=f"direct:{i}", payload={"n": i}, now=svc.clock())
    with db.transaction() as s:
        total = s.execute(select(func.count()).select_from(Outbox).where(PLATFORM)).scalar_one()
        topics = set(s.execute(select(Outbox.topic).distinct()).scalars())
    assert {"decision", "action", "notice", "test.direct"} <= topics
    return int(total)


def produce_direct(db: Database, svc: ReviewService, n: int, *, prefix: str = "m") -> int:
    with db.transaction() as s:
        for i in range(n):
            enqueue(s, topic="test.direct", key=f"{prefix}:{i}", payload={"n": i},
                    now=svc.clock())
    return n


#: the rows the platform's worker owns (lookfirst's own sinks lease theirs separately)
PLATFORM = ~Outbox.topic.startswith(INTERNAL_TOPIC_PREFIX)


def counts(db: Database) -> dict[str, int]:
    with db.transaction() as s:
        out = {"pending": 0, "delivered": 0, "dead": 0}
        out.update({status: int(n) for status, n in s.execute(
            select(Outbox.status, func.count()).where(PLATFORM).group_by(Outbox.status))})
        return out


def keys(db: Database, status: str | None = None) -> set[str]:
    with db.transaction() as s:
        q = select(Outbox.idempotency_key).where(PLATFORM)
        if status:
            q = q.where(Outbox.status == status)
        return set(s.execute(q).scalars())


def total_attempts(db: Database) -> int:
    with db.transaction() as s:
        return int(s.execute(select(func.sum(Outbox.attempts)).where(PLATFORM)).scalar_one() or 0)


def drain(db: Database, worker: OutboxWorker, clock: FakeClock, *, max_passes: int = 300,
          deadline_s: float = 180.0, limit: int = 100) -> DeliveryReport:
    """Worker passes until nothing is pending; the fake clock jumps past every backoff."""
    total = DeliveryReport()
    deadline = time.monotonic() + deadline_s
    for _ in range(max_passes):
        r = worker.run_once(limit=limit)
        for f in ("leased", "delivered", "retried", "dead"):
            setattr(total, f, getattr(total, f) + getattr(r, f))
        if counts(db)["pending"] == 0:
            return total
        if r.leased == 0:
            clock.advance(seconds=worker.policy.max_delay.total_seconds())
        assert time.monotonic() < deadline, "the outbox did not drain in time"
    raise AssertionError(f"the outbox did not drain in {max_passes} passes: {counts(db)}")


def assert_exactly_once(db: Database, receiver: FlakyReceiver) -> None:
    """Every delivered message had its effect exactly once; nothing the sender did not send."""
    receiver.wait_idle()  # a hung handler applies its effect after the sender gave up
    delivered, dead, everything = keys(db, "delivered"), keys(db, "dead"), keys(db)
    effects = set(receiver.effects)
    assert delivered <= effects, f"lost: {sorted(delivered - effects)[:5]}"
    assert effects <= everything, "an effect for a message nobody sent"
    assert effects - delivered <= dead  # only a dead letter may have had its effect unbeknown
    assert receiver.stats.applied == len(effects)  # once per key, never twice
    assert receiver.stats.conflicts == 0  # a redelivery carries the very same message


# ---- the flaky platform ---------------------------------------------------------------------
def test_every_message_has_exactly_one_effect_at_a_flaky_receiver(
    db: Database, svc: ReviewService, clock: FakeClock, receiver: FlakyReceiver
) -> None:
    total = produce_through_flows(db, svc, holds=100, reviews=40, decided=20, direct=40)
    assert total >= 300
    receiver.set_faults(Faults(fail=0.12, hang=0.03, twice=0.10, hang_s=HANG_S))
    worker = make_worker(db, receiver, clock=clock)
    try:
        report = drain(db, worker, clock)
    finally:
        worker.close()
    c = counts(db)
    assert c["pending"] == 0
    assert c["delivered"] + c["dead"] == total  # none lost
    assert c["dead"] == 0  # eight attempts at these odds: every message gets through
    assert_exactly_once(db, receiver)
    assert set(receiver.effects) == keys(db)
    st = receiver.stats
    # the run really exercised each misbehaviour and the receiver's dedupe
    assert st.faults["fail"] and st.faults["hang"] and st.faults["twice"]
    assert st.duplicates_suppressed >= st.faults["twice"]
    assert st.rejected == 0
    attempts = total_attempts(db)
    assert attempts == report.leased == st.requests
    print(f"\noutbox[{db.engine.dialect.name}]: messages={total} attempts={attempts} "
          f"faults={dict(st.faults)} duplicates_suppressed={st.duplicates_suppressed} "
          f"dead={c['dead']}")


def test_dead_letters_are_visible_and_an_operator_retry_delivers_them_once(
    db: Database, svc: ReviewService, clock: FakeClock, receiver: FlakyReceiver
) -> None:
    total = produce_direct(db, svc, 120)
    receiver.set_faults(Faults(fail=0.45, twice=0.20))
    few = DeliveryPolicy(max_attempts=2, base_delay=dt.timedelta(seconds=1),
                         max_delay=dt.timedelta(seconds=4), visibility=dt.timedelta(seconds=30))
    worker = make_worker(db, receiver, clock=clock, policy=few)
    try:
        drain(db, worker, clock)
        c = counts(db)
        assert c["pending"] == 0 and c["delivered"] + c["dead"] == total
        assert c["dead"] > 0
        with db.transaction() as s:
            dead_rows = list_rows(s, status="dead", limit=total)
        assert len(dead_rows) == c["dead"]
        assert all(r["attempts"] == 2 and r["last_error"] == "HTTP 500" for r in dead_rows)
        assert_exactly_once(db, receiver)
        dead_with_effect = keys(db, "dead") & set(receiver.effects)  # "answered twice" at the end
        # the operator fixes the platform and retries the dead letters
        receiver.set_faults(Faults())
        with db.transaction() as s:
            assert requeue_dead(s, now=clock()) == c["dead"]
        suppressed_before = receiver.stats.duplicates_suppressed
        drain(db, worker, clock)
    finally:
        worker.close()
    c = counts(db)
    assert c == {"pending": 0, "delivered": total, "dead": 0}
    assert_exactly_once(db, receiver)
    assert set(receiver.effects) == keys(db)
    assert receiver.stats.duplicates_suppressed - suppressed_before == len(dead_with_effect)
    print(f"\noutbox[{db.engine.dialect.name}] max_attempts=2: messages={total} "
          f"dead_letters={len(dead_rows)} (with an effect already: {len(dead_with_effect)}) "
          f"faults={dict(receiver.stats.faults)} "
          f"duplicates_suppressed={receiver.stats.duplicates_suppressed}")


def test_a_wrong_secret_is_rejected_and_counts_for_nothing(
    db: Database, svc: ReviewService, clock: FakeClock, receiver: FlakyReceiver
) -> None:
    total = produce_direct(db, svc, 25)
    once = DeliveryPolicy(max_attempts=1)
    worker = make_worker(db, receiver, clock=clock, policy=once, secret="not-the-platform-secret")
    try:
        report = worker.run_once(limit=100)
    finally:
        worker.close()
    assert report.leased == total and report.dead == total and report.delivered == 0
    assert receiver.stats.rejected == total and receiver.stats.applied == 0
    assert receiver.effects == {}
    with db.transaction() as s:
        assert all(r["last_error"] == "HTTP 401" for r in list_rows(s, status="dead"))
    # the signature covers the body: a body swapped under a valid signature is refused too
    stamp = "1764072000"
    signed = b'{"id":"direct:x","payload":{},"topic":"test"}'
    forged = b'{"id":"direct:x","payload":{"n":1},"topic":"test"}'
    headers = {"Idempotency-Key": "direct:x", TIMESTAMP_HEADER: stamp,
               SIGNATURE_HEADER: sign(SECRET, stamp, signed)}
    with httpx.Client(timeout=2.0) as client:
        assert client.post(receiver.url, content=forged, headers=headers).status_code == 401
        assert client.post(receiver.url, content=signed, headers=headers).status_code == 200
    assert set(receiver.effects) == {"direct:x"}


def test_a_worker_that_dies_after_leasing_is_redelivered_after_the_visibility_timeout(
    db: Database, svc: ReviewService, clock: FakeClock, receiver: FlakyReceiver
) -> None:
    total = produce_direct(db, svc, 30)
    zombie = make_worker(db, receiver, clock=clock)
    heir = make_worker(db, receiver, clock=clock, seed=8)
    try:
        leased = zombie.lease(limit=100)
        assert len(leased) == total
        # it delivered some, then died before recording anything
        assert [r for _, r in zombie.sink.deliver(leased[:10])] == [DELIVERED] * 10
        # while the lease runs, nobody else sees the rows
        assert heir.run_once().leased == 0
        clock.advance(seconds=POLICY.visibility.total_seconds() - 1)
        assert heir.run_once().leased == 0
        clock.advance(seconds=2)
        report = heir.run_once(limit=100)
        assert report.leased == total and report.delivered == total
        # the dead worker comes back and settles its stale lease: ignored (attempts moved on)
        for message in leased[:3]:
            zombie.settle(message, Failed("late"))
    finally:
        zombie.close()
        heir.close()
    assert counts(db) == {"pending": 0, "delivered": total, "dead": 0}
    with db.transaction() as s:
        assert {r["attempts"] for r in list_rows(s, limit=total)} == {2}
    assert_exactly_once(db, receiver)
    assert receiver.stats.duplicates_suppressed == 10
    assert sorted(receiver.stats.requests_per_key.values()) == [1] * 20 + [2] * 10


def test_a_message_whose_workers_keep_dying_is_dead_lettered_not_leased_forever(
    db: Database, svc: ReviewService, clock: FakeClock, receiver: FlakyReceiver
) -> None:
    """A poison message that kills every worker that takes it: after max_attempts leases ran
    out unsettled it is a visible dead letter, and the other messages flow on."""
    produce_direct(db, svc, 1, prefix="poison")
    produce_direct(db, svc, 4, prefix="fine")
    two = DeliveryPolicy(max_attempts=2, visibility=dt.timedelta(seconds=30))
    for attempt in (1, 2):
        w = make_worker(db, receiver, clock=clock, policy=two, seed=attempt)
        try:
            rows = w.lease(limit=1)  # takes the poison message, then dies
        finally:
            w.close()
        assert [r.key for r in rows] == ["poison:0"]
        assert rows[0].attempts == attempt
        clock.advance(seconds=31)
    heir = make_worker(db, receiver, clock=clock, policy=two)
    try:
        report = heir.run_once(limit=10)
    finally:
        heir.close()
    assert report.leased == report.delivered == 4
    assert counts(db) == {"pending": 0, "delivered": 4, "dead": 1}
    with db.transaction() as s:
        (dead,) = list_rows(s, status="dead")
    assert dead["key"] == "poison:0" and dead["attempts"] == 2
    assert "lease ran out" in dead["last_error"]
    assert "poison:0" not in receiver.effects


def test_two_concurrent_workers_never_deliver_a_message_twice(db: Database) -> None:
    """Real clock and a receiver that refuses stale stamps; a healthy platform, so any
    repeated request could only come from two workers holding the same row."""
    total = produce_direct(db, ReviewService(make_config()), 300)
    strict = FlakyReceiver(secret=SECRET, seed=1, max_skew_s=300).start()
    workers = [make_worker(db, strict, clock=None, seed=i) for i in range(2)]
    reports = [DeliveryReport() for _ in workers]
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def run(i: int) -> None:
        try:
            start.wait(timeout=10)
            deadline = time.monotonic() + 60
            for _ in range(200):
                r = workers[i].run_once(limit=10)
                for f in ("leased", "delivered", "retried", "dead"):
                    setattr(reports[i], f, getattr(reports[i], f) + getattr(r, f))
                if r.leased == 0 and counts(db)["pending"] == 0:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError("worker did not finish in time")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
    finally:
        for w in workers:
            w.close()
        strict.stop()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert counts(db) == {"pending": 0, "delivered": total, "dead": 0}
    assert sum(r.delivered for r in reports) == total
    assert strict.stats.rejected == 0
    assert strict.stats.duplicates_suppressed == 0
    assert set(strict.stats.requests_per_key.values()) == {1}
    assert set(strict.effects) == keys(db)
    print(f"\noutbox[{db.engine.dialect.name}] two workers: "
          f"{[r.delivered for r in reports]} delivered, 0 requested twice")


# ---- the sink interface ---------------------------------------------------------------------
class ScriptedSink:
    """A sink of lookfirst's own kind (like the Label Studio one): it answers from a script,
    failing each key a given number of times first, and records what it was handed."""

    def __init__(self, topics: frozenset[str] | None, *, failures: dict[str, int],
                 silent: frozenset[str] = frozenset(), crash_after: int | None = None) -> None:
        self._topics = topics
        self.failures = dict(failures)
        self.silent = silent  # keys it never answers
        self.crash_after = crash_after  # answers this many, then raises
        self.handed: list[str] = []
        self.closed = False

    @property
    def topics(self) -> frozenset[str] | None:
        return self._topics

    def deliver(self, messages: Sequence[Message]) -> Iterator[tuple[Message, SinkResult]]:
        for n, m in enumerate(messages):
            if self.crash_after is not None and n == self.crash_after:
                raise RuntimeError("the sink's process died")
            self.handed.append(m.key)
            if m.key in self.silent:
                continue
            left = self.failures.get(m.key, 0)
            if left:
                self.failures[m.key] = left - 1
                yield m, Failed(f"scripted failure ({left} left)")
            else:
                yield m, DELIVERED

    def close(self) -> None:
        self.closed = True


def rows_by_key(db: Database) -> dict[str, Outbox]:
    with db.transaction() as s:
        rows = list(s.execute(select(Outbox)).scalars())
        for r in rows:
            s.expunge(r)
    return {r.idempotency_key: r for r in rows}


def test_a_sink_that_fails_some_messages_gets_them_again_after_a_jittered_backoff_then_dead(
    db: Database, clock: FakeClock
) -> None:
    topic = f"{INTERNAL_TOPIC_PREFIX}scripted"
    with db.transaction() as s:
        for i in range(12):
            enqueue(s, topic=topic, key=f"ok:{i}", payload={"n": i}, now=clock())
        for i in range(12):
            enqueue(s, topic=topic, key=f"flaky:{i}", payload={"n": i}, now=clock())
        enqueue(s, topic=topic, key="doomed", payload={}, now=clock())
        enqueue(s, topic=topic, key="mute", payload={}, now=clock())
        enqueue(s, topic="decision", key="platform:1", payload={}, now=clock())  # not its topic
    policy = DeliveryPolicy(max_attempts=3, base_delay=dt.timedelta(seconds=10),
                            max_delay=dt.timedelta(seconds=25))
    sink = ScriptedSink(frozenset({topic}), silent=frozenset({"mute"}),
                        failures={**{f"flaky:{i}": 2 for i in range(12)}, "doomed": 99})
    worker = OutboxWorker(db, sink, policy=policy, clock=clock, rng=random.Random(3))

    first = worker.run_once(limit=100)
    assert (first.leased, first.delivered, first.retried, first.dead) == (26, 12, 14, 0)
    assert "platform:1" not in sink.handed  # a sink leases only its own topics
    rows, now = rows_by_key(db), clock()
    assert rows["mute"].last_error == "no answer from the sink"
    delays = [(rows[f"flaky:{i}"].next_attempt_at - now).total_seconds() for i in range(12)]
    # full jitter after the first attempt: uniform in [0, min(max_delay, base * 2**1)] = [0, 20]
    assert all(0 <= d <= 20 for d in delays) and len(set(delays)) == len(delays)
    assert all(rows[f"flaky:{i}"].last_error == "scripted failure (2 left)" for i in range(12))

    # halfway through the backoffs: exactly the messages whose backoff has passed go again
    clock.advance(seconds=sorted(delays)[6])
    due = {k for k, r in rows.items()
           if r.topic == topic and r.status == "pending" and r.next_attempt_at <= clock()}
    assert 0 < len(due) < 14
    worker.run_once(limit=100)
    assert set(sink.handed[26:]) == due and len(sink.handed) == 26 + len(due)

    for _ in range(3):  # past every backoff (at most max_delay)
        clock.advance(seconds=policy.max_delay.total_seconds())
        worker.run_once(limit=100)
    rows = rows_by_key(db)
    assert {k for k, r in rows.items() if r.status == "delivered"} == (
        {f"ok:{i}" for i in range(12)} | {f"flaky:{i}" for i in range(12)})
    for key in ("doomed", "mute"):  # dead after max_attempts, and visible as such
        assert rows[key].status == "dead" and rows[key].attempts == policy.max_attempts
    assert rows["doomed"].last_error == "scripted failure (97 left)"
    assert all(rows[f"flaky:{i}"].attempts == 3 for i in range(12))
    assert rows["platform:1"].status == "pending" and rows["platform:1"].attempts == 0
    assert sink.handed.count("doomed") == 3 and sink.handed.count("ok:0") == 1
    worker.close()
    assert sink.closed


def test_the_platform_sink_never_sees_internal_topics_and_a_sink_crash_leaves_leases_to_expire(
    db: Database, clock: FakeClock
) -> None:
    with db.transaction() as s:
        for i in range(6):
            enqueue(s, topic="decision", key=f"d:{i}", payload={"n": i}, now=clock())
        enqueue(s, topic=f"{INTERNAL_TOPIC_PREFIX}task", key="ls:1", payload={}, now=clock())
    crashing = ScriptedSink(None, failures={}, crash_after=2)
    worker = OutboxWorker(db, crashing, policy=POLICY, clock=clock, rng=random.Random(1))
    with pytest.raises(RuntimeError, match="died"):
        worker.run_once(limit=100)
    rows = rows_by_key(db)
    assert "ls:1" not in crashing.handed and rows["ls:1"].attempts == 0
    # the two answered before the crash are settled; the rest stay leased, invisible meanwhile
    assert {k for k, r in rows.items() if r.status == "delivered"} == {"d:0", "d:1"}
    healthy = ScriptedSink(None, failures={})
    heir = OutboxWorker(db, healthy, policy=POLICY, clock=clock, rng=random.Random(2))
    assert heir.run_once(limit=100).leased == 0
    clock.advance(seconds=POLICY.visibility.total_seconds() + 1)
    report = heir.run_once(limit=100)
    assert report.leased == report.delivered == 4
    assert healthy.handed == ["d:2", "d:3", "d:4", "d:5"]
    assert rows_by_key(db)["ls:1"].status == "pending"


def test_a_sink_that_answers_for_a_message_it_was_not_given_is_refused(
    db: Database, clock: FakeClock
) -> None:
    with db.transaction() as s:
        enqueue(s, topic="decision", key="d:1", payload={}, now=clock())

    class Twice(ScriptedSink):
        def deliver(self, messages: Sequence[Message]) -> Iterator[tuple[Message, SinkResult]]:
            for m in messages:
                yield m, DELIVERED
                yield m, DELIVERED

    worker = OutboxWorker(db, Twice(None, failures={}), policy=POLICY, clock=clock)
    with pytest.raises(RuntimeError, match="answered outbox message .* twice"):
        worker.run_once()
    assert rows_by_key(db)["d:1"].status == "delivered"  # the first answer stands
