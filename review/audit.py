"""The hash-chained audit log.  Each event is written in the transaction of the change it
records; each hash covers the previous hash and the event, so an edited, deleted or reordered
row breaks the chain, and the head row catches a truncated tail."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from review.schema import AuditEvent, AuditHead

GENESIS = "0" * 64


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def event_hash(
    *,
    prev_hash: str,
    seq: int,
    at: dt.datetime,
    actor: str,
    event: str,
    subject_type: str,
    subject_id: str,
    data: dict[str, Any],
) -> str:
    body = _canonical(
        {
            "seq": seq,
            # microseconds, UTC: the database round-trips this exactly on every backend
            "at": at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": actor,
            "event": event,
            "subject": [subject_type, subject_id],
            "data": data,
        }
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewEvent:
    at: dt.datetime
    actor: str
    event: str
    subject_type: str
    subject_id: str | int
    data: dict[str, Any] = field(default_factory=dict)


_EVENT = cast(Table, AuditEvent.__table__)
_HEAD = cast(Table, AuditHead.__table__)
# built once: the hot path (a claim) appends an event per transaction
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_MOVE_HEAD = (
    update(_HEAD).where(_HEAD.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


def append(
    session: Session,
    *,
    at: dt.datetime,
    actor: str,
    event: str,
    subject_type: str,
    subject_id: str | int,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event (see `append_many`)."""
    append_many(session, [NewEvent(at, actor, event, subject_type, subject_id, data or {})])


def append_many(session: Session, events: Sequence[NewEvent]) -> None:
    """Append events in order, in the caller's transaction.  Locks the head row (PostgreSQL)
    so concurrent writers serialise their chain links instead of forking the chain; SQLite is
    already single-writer.  One lock, one insert and one head update however many events."""
    if not events:
        return
    head = session.execute(_LOCK_HEAD).one()
    seq, prev = int(head.seq), str(head.hash)
    rows: list[dict[str, Any]] = []
    for e in events:
        seq += 1
        data = json.loads(_canonical(e.data))  # what the database will give back
        digest = event_hash(prev_hash=prev, seq=seq, at=e.at, actor=e.actor, event=e.event,
                            subject_type=e.subject_type, subject_id=str(e.subject_id),
                            data=data)
        rows.append({"seq": seq, "at": e.at, "actor": e.actor, "event": e.event,
                     "subject_type": e.subject_type, "subject_id": str(e.subject_id),
                     "data": data, "prev_hash": prev, "hash": digest})
        prev = digest
    session.execute(insert(_EVENT), rows)
    session.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    events: int
    problem: str | None = None
    at_seq: int | None = None


def verify(session: Session, *, batch: int = 5000) -> ChainReport:
    """Recompute the whole chain; report the first break."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in _rows(session, batch):
        if row.seq != expected_seq:
            return ChainReport(False, count, f"sequence gap: expected {expected_seq}", row.seq)
        if row.prev_hash != prev:
            return ChainReport(False, count, "link to the previous event does not match", row.seq)
        digest = event_hash(
            prev_hash=row.prev_hash,
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            event=row.event,
            subject_type=row.subject_type,
            subject_id=row.subject_id,
            data=row.data,
        )
        if digest != row.hash:
            return ChainReport(False, count, "event content does not match its hash", row.seq)
        prev = row.hash
        expected_seq += 1
        count += 1
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    if head.seq != count or head.hash != prev:
        return ChainReport(False, count, "the chain's head does not match its last event", head.seq)
    return ChainReport(True, count)


def _rows(session: Session, batch: int) -> Iterator[AuditEvent]:
    last = 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()
