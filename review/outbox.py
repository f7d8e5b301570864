"""The transactional outbox: its table operations (enqueue, lease, settle, dead letters, backlog)
and the worker loop that hands leased messages to a delivery `Sink`.

Messages are written by `enqueue`, in the same transaction as the change they announce.  The
worker leases due rows in a short transaction, has its sink deliver them outside any
transaction (a slow receiver never holds a database lock), then settles each answer.  A worker
that dies mid-way leaves the lease to run out and the message is delivered again with the same
idempotency key, so the receiver sees each message's effect once.  Retries back off
exponentially with full jitter; after `max_attempts` a row is dead-lettered and stays visible.
What delivering means (a signed webhook, a Label Studio import) is the sink's business: this
module knows nothing of HTTP.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from review.db import Database
from review.schema import Outbox

log = logging.getLogger(__name__)
#: topics under this prefix are for lookfirst's own sinks (Label Studio tasks): a sink with
#: `topics = None` (the platform's webhook) never leases them; one naming topics leases only those
INTERNAL_TOPIC_PREFIX = "labelstudio."

#: what settling a delivery attempt did to its row
Settled = Literal["delivered", "retried", "dead"]


# ---- messages and what a sink answers -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    """One leased outbox row, detached from the database."""

    id: int
    topic: str
    #: the idempotency key: the same on every delivery attempt of this message
    key: str
    payload: Mapping[str, Any]
    #: delivery attempts so far, this one included
    attempts: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver has the message."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Not delivered: tried again after a backoff, or dead-lettered after the last attempt.
    `reason` is kept on the row for operators: a status or error name, never a payload."""

    reason: str


SinkResult = Delivered | Failed
DELIVERED = Delivered()


class Sink(Protocol):
    """Where the outbox worker hands leased messages.

    `deliver` answers each message it was given, once, as it goes (the worker settles every
    answer at once, so a long batch holds no finished message past its lease); a message left
    unanswered is failed.  An exception leaves the unanswered messages leased: they go again
    when the lease runs out.
    """

    @property
    def topics(self) -> frozenset[str] | None:
        """The topics this sink delivers; None: every topic outside INTERNAL_TOPIC_PREFIX."""
        ...

    def deliver(self, messages: Sequence[Message]) -> Iterable[tuple[Message, SinkResult]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 8
    base_delay: dt.timedelta = dt.timedelta(seconds=2)
    max_delay: dt.timedelta = dt.timedelta(minutes=30)
    #: how long a leased row is invisible to other workers while it is being delivered
    visibility: dt.timedelta = dt.timedelta(seconds=60)

    def backoff(self, attempts: int, rng: random.Random) -> dt.timedelta:
        cap = min(self.max_delay.total_seconds(), self.base_delay.total_seconds() * 2**attempts)
        return dt.timedelta(seconds=rng.uniform(0, cap))  # full jitter


@dataclass
class DeliveryReport:
    leased: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0


# ---- table operations (in the caller's transaction) -----------------------------------------
def enqueue(s: Session, *, topic: str, key: str, payload: Mapping[str, Any],
            now: dt.datetime) -> None:
    """Write one message, due now, in the caller's transaction (the change it announces).

    A key names one message for ever: a key already written fails the transaction at flush
    (IntegrityError).  A writer that may repeat itself asks `known_keys` first.
    """
    s.add(Outbox(topic=topic, idempotency_key=key, payload=dict(payload), status="pending",
                 attempts=0, next_attempt_at=now, created_at=now))


def known_keys(s: Session, keys: Iterable[str]) -> set[str]:
    """Which of these idempotency keys have a message already (in any status)."""
    wanted = list(keys)
    if not wanted:
        return set()
    return set(s.execute(
        select(Outbox.idempotency_key).where(Outbox.idempotency_key.in_(wanted))
    ).scalars())


def lease(s: Session, *, now: dt.datetime, policy: DeliveryPolicy,
          topics: frozenset[str] | None, limit: int) -> list[Message]:
    """Take up to `limit` due messages of these topics for `policy.visibility` (other workers
    skip them meanwhile); a message whose every attempt ran out unsettled is dead-lettered."""
    rows = s.execute(
        select(Outbox)
        .where(Outbox.status == "pending", Outbox.next_attempt_at <= now,
               Outbox.topic.in_(sorted(topics)) if topics is not None
               else ~Outbox.topic.startswith(INTERNAL_TOPIC_PREFIX))
        .order_by(Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    leased: list[Message] = []
    for row in rows:
        if row.attempts >= policy.max_attempts:
            # its last lease ran out unsettled: the worker died mid-delivery, perhaps on this
            # very message; a poison message must not be retried forever
            row.status = "dead"
            row.last_error = f"lease ran out after attempt {row.attempts} (worker died?)"
            log.warning("outbox lease ran out on the last attempt",
                        extra={"outbox_id": row.id, "topic": row.topic,
                               "attempts": row.attempts, "outcome": "dead"})
            continue
        row.attempts += 1
        row.next_attempt_at = now + policy.visibility
        leased.append(Message(id=row.id, topic=row.topic, key=row.idempotency_key,
                              payload=dict(row.payload), attempts=row.attempts))
    s.flush()
    return leased


def settle(s: Session, message: Message, result: SinkResult, *, now: dt.datetime,
           policy: DeliveryPolicy, rng: random.Random) -> Settled:
    """Record one attempt's result: delivered; failed and due again after a backoff with full
    jitter; or dead after the last attempt.  Only the lease holder settles: a message leased
    again since (by another worker, after this lease ran out) is left alone."""
    values: dict[str, Any]
    settled: Settled
    if isinstance(result, Delivered):
        values = {"status": "delivered", "delivered_at": now, "last_error": None}
        settled = "delivered"
    elif message.attempts >= policy.max_attempts:
        values = {"status": "dead", "last_error": result.reason}
        settled = "dead"
    else:
        values = {"next_attempt_at": now + policy.backoff(message.attempts, rng),
                  "last_error": result.reason}
        settled = "retried"
    s.execute(
        update(Outbox)
        .where(Outbox.id == message.id, Outbox.status == "pending",
               Outbox.attempts == message.attempts)
        .values(**values)
    )
    return settled


def backlog(s: Session, *, topics: Iterable[str] | None = None) -> dict[str, int]:
    """Messages per status (of these topics, or all), for metrics and `lookfirst outbox status`."""
    q = select(Outbox.status, func.count()).group_by(Outbox.status)
    if topics is not None:
        q = q.where(Outbox.topic.in_(sorted(topics)))
    out = {"pending": 0, "delivered": 0, "dead": 0}
    out.update({status: int(n) for status, n in s.execute(q).all()})
    return out


def list_rows(s: Session, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    q = select(Outbox).order_by(Outbox.id.desc()).limit(limit)
    if status:
        q = q.where(Outbox.status == status)
    return [
        {"id": r.id, "topic": r.topic, "key": r.idempotency_key, "status": r.status,
         "attempts": r.attempts, "next_attempt_at": r.next_attempt_at.isoformat(),
         "last_error": r.last_error}
        for r in s.execute(q).scalars()
    ]


def requeue_dead(s: Session, *, now: dt.datetime) -> int:
    """An operator's retry of dead letters, after the receiver is fixed."""
    res = s.execute(
        update(Outbox).where(Outbox.status == "dead")
        .values(status="pending", attempts=0, next_attempt_at=now)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


# ---- the worker ------------------------------------------------------------------------------
class OutboxWorker:
    """Leases the due messages of its sink's topics, has the sink deliver them and settles each
    answer, every step its own short transaction."""

    def __init__(
        self,
        db: Database,
        sink: Sink,
        *,
        policy: DeliveryPolicy | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.sink = sink
        self.policy = policy or DeliveryPolicy()
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.rng = rng or random.Random()

    def close(self) -> None:
        self.sink.close()

    def lease(self, *, limit: int = 50) -> list[Message]:
        with self.db.transaction() as s:
            return lease(s, now=self.clock(), policy=self.policy, topics=self.sink.topics,
                         limit=limit)

    def settle(self, message: Message, result: SinkResult) -> Settled:
        with self.db.transaction() as s:
            settled = settle(s, message, result, now=self.clock(), policy=self.policy,
                             rng=self.rng)
        if settled != "delivered":
            assert isinstance(result, Failed)
            log.warning("outbox delivery failed",
                        extra={"outbox_id": message.id, "topic": message.topic,
                               "attempts": message.attempts, "outcome": settled,
                               "error": result.reason})
        return settled

    def run_once(self, *, limit: int = 50) -> DeliveryReport:
        report = DeliveryReport()
        messages = self.lease(limit=limit)
        report.leased = len(messages)
        if not messages:
            return report
        waiting = {m.id: m for m in messages}
        for message, result in self.sink.deliver(messages):
            if waiting.pop(message.id, None) is None:
                raise RuntimeError(f"{type(self.sink).__name__} answered outbox message "
                                   f"{message.id} twice or without being given it")
            self._count(report, self.settle(message, result))
        for message in waiting.values():
            self._count(report, self.settle(message, Failed("no answer from the sink")))
        return report

    @staticmethod
    def _count(report: DeliveryReport, settled: Settled) -> None:
        setattr(report, settled, getattr(report, settled) + 1)
