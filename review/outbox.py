"""Delivery to the platform: the transactional outbox and its worker.

Rows are written in the same transaction as the change they announce (see ReviewService).
The worker leases due rows in a short transaction, delivers outside any transaction (a slow
webhook never holds a database lock), then records the result.  A worker that dies mid-way
leaves the lease to run out and the row is delivered again with the same idempotency key, so
the receiver sees each message's effect once.  Retries back off exponentially with full
jitter; after `max_attempts` a row is dead-lettered and stays visible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from review.db import Database
from review.schema import Outbox

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Lookfirst-Signature"
#: topics under this prefix are for lookfirst's own sinks (Label Studio tasks): the platform's
#: worker never sends them, and a sink given `topics` leases only its own
INTERNAL_TOPIC_PREFIX = "labelstudio."
TIMESTAMP_HEADER = "X-Lookfirst-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "timestamp.body": the receiver recomputes it and rejects old stamps."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


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


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        *,
        url: str,
        secret: str,
        policy: DeliveryPolicy | None = None,
        timeout_s: float = 5.0,
        clock: Callable[[], dt.datetime] | None = None,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
        topics: frozenset[str] | None = None,
    ) -> None:
        self.db = db
        self.topics = topics
        self.url = url
        self.secret = secret
        self.policy = policy or DeliveryPolicy()
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.client = client or httpx.Client(timeout=timeout_s)
        self.rng = rng or random.Random()

    def close(self) -> None:
        self.client.close()

    def lease(self, *, limit: int = 50) -> list[Outbox]:
        now = self.clock()
        with self.db.transaction() as s:
            rows = s.execute(
                select(Outbox)
                .where(Outbox.status == "pending", Outbox.next_attempt_at <= now,
                       Outbox.topic.in_(sorted(self.topics)) if self.topics is not None
                       else ~Outbox.topic.startswith(INTERNAL_TOPIC_PREFIX))
                .order_by(Outbox.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars().all()
            leased = []
            for row in rows:
                if row.attempts >= self.policy.max_attempts:
                    # its last lease ran out unsettled: the worker died mid-delivery, perhaps
                    # on this very message; a poison message must not be retried forever
                    row.status = "dead"
                    row.last_error = f"lease ran out after attempt {row.attempts} (worker died?)"
                    log.warning("outbox lease ran out on the last attempt",
                                extra={"outbox_id": row.id, "topic": row.topic,
                                       "attempts": row.attempts, "outcome": "dead"})
                    continue
                row.attempts += 1
                row.next_attempt_at = now + self.policy.visibility
                leased.append(row)
            s.flush()
            for row in rows:
                s.expunge(row)
            return leased

    def deliver(self, row: Outbox) -> tuple[bool, str | None]:
        body = json.dumps(
            {"id": row.idempotency_key, "topic": row.topic, "payload": row.payload},
            sort_keys=True, separators=(",", ":"),
        ).encode()
        ts = str(int(self.clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": row.idempotency_key,
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self.secret, ts, body),
        }
        try:
            resp = self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}"
        if 200 <= resp.status_code < 300:
            return True, None
        return False, f"HTTP {resp.status_code}"

    def _settle(self, row: Outbox, ok: bool, error: str | None) -> str:
        now = self.clock()
        with self.db.transaction() as s:
            if ok:
                values: dict[str, Any] = {"status": "delivered", "delivered_at": now,
                                          "last_error": None}
                outcome = "delivered"
            elif row.attempts >= self.policy.max_attempts:
                values = {"status": "dead", "last_error": error}
                outcome = "dead"
            else:
                values = {"next_attempt_at": now + self.policy.backoff(row.attempts, self.rng),
                          "last_error": error}
                outcome = "retried"
            # only the lease holder settles: a row re-leased by another worker is left alone
            s.execute(
                update(Outbox)
                .where(Outbox.id == row.id, Outbox.status == "pending",
                       Outbox.attempts == row.attempts)
                .values(**values)
            )
        if outcome != "delivered":
            log.warning("outbox delivery failed",
                        extra={"outbox_id": row.id, "topic": row.topic, "attempts": row.attempts,
                               "outcome": outcome, "error": error})
        return outcome

    def run_once(self, *, limit: int = 50) -> DeliveryReport:
        report = DeliveryReport()
        rows = self.lease(limit=limit)
        report.leased = len(rows)
        for row in rows:
            ok, error = self.deliver(row)
            outcome = self._settle(row, ok, error)
            setattr(report, outcome, getattr(report, outcome) + 1)
        return report


def backlog(s: Session) -> dict[str, int]:
    """Rows per status, for metrics and `lookfirst outbox status`."""
    rows = s.execute(select(Outbox.status, func.count()).group_by(Outbox.status)).all()
    out = {"pending": 0, "delivered": 0, "dead": 0}
    out.update({status: int(n) for status, n in rows})
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
        update(Outbox).where(or_(Outbox.status == "dead"))
        .values(status="pending", attempts=0, next_attempt_at=now)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]
