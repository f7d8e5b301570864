"""The hash-chained audit log.  Each event is written in the transaction of the change it
records; each hash covers the previous hash and the event, so an edited, deleted or reordered
row breaks the chain, and the head row catches a truncated tail."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from review.schema import AuditEvent, AuditHead

GENESIS = "0" * 64


def canonical(value: Any) -> str:
    """The one JSON form the audit log hashes: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _at(at: dt.datetime) -> str:
    # microseconds, UTC: the database round-trips this exactly on every backend
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_body(
    *,
    seq: int,
    at: dt.datetime,
    actor: str,
    event: str,
    subject_type: str,
    subject_id: str,
    data: dict[str, Any],
) -> str:
    """What an event's hash covers, after the previous event's hash."""
    return canonical({"seq": seq, "at": _at(at), "actor": actor, "event": event,
                      "subject": [subject_type, subject_id], "data": data})


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
    body = canonical_body(seq=seq, at=at, actor=actor, event=event, subject_type=subject_type,
                          subject_id=subject_id, data=data)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


#: stand-ins for what only the database knows when a body is rendered ahead of the event
_SEQ_MARK = 7_340_281_906_155_023_441
_ID_MARK = "lookfirst-subject-id-mark"


def body_segments(
    *, at: dt.datetime, actor: str, event: str, subject_type: str, data: dict[str, Any],
) -> tuple[str, str, str]:
    """The canonical body of an event whose sequence number and (numeric) subject id only the
    database will know, as the three literal pieces around them:

        canonical_body(seq=n, subject_id=str(i), ...) == seg[0] + str(n) + seg[1] + str(i) + seg[2]

    (PostgreSQL's claim function hashes its events this way, so their JSON is rendered here,
    by the same code as every other event's.)  The id goes inside a JSON string, so it must be
    one that needs no escaping, as digits do.  "seq" and "subject" are the body's last keys,
    so the last occurrence of each stand-in is the real one, whatever the actor or the data
    hold."""
    body = canonical_body(seq=_SEQ_MARK, at=at, actor=actor, event=event,
                          subject_type=subject_type, subject_id=_ID_MARK, data=data)
    head, _, tail = body.rpartition(_ID_MARK)
    first, _, middle = head.rpartition(str(_SEQ_MARK))
    return first, middle, tail


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
#: the first head no other transaction holds (PostgreSQL; SQLite has one writer: always chain 1)
_FREE_HEAD = (
    select(_HEAD.c.id, _HEAD.c.seq, _HEAD.c.hash)
    .order_by(_HEAD.c.id).limit(1).with_for_update(skip_locked=True)
)
#: every head is taken: wait for one (chosen by the caller)
_WAIT_HEAD = (
    select(_HEAD.c.id, _HEAD.c.seq, _HEAD.c.hash)
    .where(_HEAD.c.id == bindparam("chain")).with_for_update()
)
_MOVE_HEAD = (
    update(_HEAD).where(_HEAD.c.id == bindparam("chain"))
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_SESSION_KEY = "lookfirst.audit_chain"


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


def _lock_head(session: Session) -> Any:
    """The head this transaction appends to, locked until it commits.  A transaction keeps
    the head it took first, so its events stay together in one chain."""
    held = held_chain(session)
    if held is not None:
        return session.execute(_WAIT_HEAD, {"chain": held}).one()  # ours already
    head = session.execute(_FREE_HEAD).first()
    if head is None:  # more audited transactions in flight than chains: queue on one
        chains = session.execute(select(func.count()).select_from(_HEAD)).scalar_one()
        head = session.execute(_WAIT_HEAD, {"chain": 1 + os.getpid() % chains}).one()
    hold_chain(session, head.id)
    return head


def held_chain(session: Session) -> int | None:
    """The chain this session's transaction already appends to, if any."""
    held = session.info.get(_SESSION_KEY)
    if held is not None and held[0] is session.get_transaction():
        return int(held[1])
    return None


def hold_chain(session: Session, chain: int) -> None:
    """Record that this transaction locked `chain`'s head (here, or inside PostgreSQL by the
    claim function), so its later events go to the same chain."""
    session.info[_SESSION_KEY] = (session.get_transaction(), chain)


def append_many(session: Session, events: Sequence[NewEvent]) -> None:
    """Append events in order, in the caller's transaction, to one chain whose head this
    transaction locks (PostgreSQL: one no other transaction holds, so concurrent writers do
    not queue on one row and no chain forks; SQLite is single-writer).  One head lock, one
    insert and one head update however many events."""
    if not events:
        return
    head = _lock_head(session)
    chain, seq, prev = int(head.id), int(head.seq), str(head.hash)
    rows: list[dict[str, Any]] = []
    for e in events:
        seq += 1
        data = json.loads(canonical(e.data))  # what the database will give back
        digest = event_hash(prev_hash=prev, seq=seq, at=e.at, actor=e.actor, event=e.event,
                            subject_type=e.subject_type, subject_id=str(e.subject_id),
                            data=data)
        rows.append({"chain": chain, "seq": seq, "at": e.at, "actor": e.actor,
                     "event": e.event, "subject_type": e.subject_type,
                     "subject_id": str(e.subject_id), "data": data, "prev_hash": prev,
                     "hash": digest})
        prev = digest
    session.execute(insert(_EVENT), rows)
    session.execute(_MOVE_HEAD, {"chain": chain, "new_seq": seq, "new_hash": prev})


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    #: events verified (all of them when ok)
    events: int
    problem: str | None = None
    at_seq: int | None = None
    #: the chain with the problem
    at_chain: int | None = None
    chains: int = 0


def verify(session: Session, *, batch: int = 5000) -> ChainReport:
    """Recompute every chain; report the first break."""
    # the heads first: events appended while this runs are past them and not looked at
    heads = session.execute(
        select(_HEAD.c.id, _HEAD.c.seq, _HEAD.c.hash).order_by(_HEAD.c.id)
    ).all()
    total = 0
    for head in heads:
        count, problem, at_seq = _verify_chain(session, head, batch)
        total += count
        if problem is not None:
            return ChainReport(False, total, problem, at_seq, head.id, len(heads))
    strays = session.execute(
        select(func.count()).select_from(AuditEvent)
        .where(AuditEvent.chain.not_in([h.id for h in heads]))
    ).scalar_one()
    if strays:
        return ChainReport(False, total, f"{strays} events hang from no chain's head",
                           chains=len(heads))
    return ChainReport(True, total, chains=len(heads))


def _verify_chain(session: Session, head: Any, batch: int) -> tuple[int, str | None, int | None]:
    prev = GENESIS
    expected_seq = 1
    count = 0
    chain, head_seq, head_hash = head.id, head.seq, head.hash
    for row in _rows(session, chain, head_seq, batch):
        if row.seq != expected_seq:
            return count, f"sequence gap: expected {expected_seq}", row.seq
        if row.prev_hash != prev:
            return count, "link to the previous event does not match", row.seq
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
            return count, "event content does not match its hash", row.seq
        prev = row.hash
        expected_seq += 1
        count += 1
    if head_seq != count or head_hash != prev:
        return count, "the chain's head does not match its last event", head_seq
    past = session.execute(
        select(func.max(AuditEvent.seq)).where(AuditEvent.chain == chain,
                                               AuditEvent.seq > head_seq)
    ).scalar()
    if past is not None:  # appended since the head was read, or hung past the head by hand
        now: int = session.execute(select(_HEAD.c.seq).where(_HEAD.c.id == chain)).scalar_one()
        if now < past:
            return count, "events past the chain's head", head_seq + 1
    return count, None, None


def _rows(session: Session, chain: int, upto: int, batch: int) -> Iterator[AuditEvent]:
    """The chain's events up to the head as it was read (later appends are not looked at)."""
    last = 0
    while True:
        rows = session.execute(
            select(AuditEvent)
            .where(AuditEvent.chain == chain, AuditEvent.seq > last, AuditEvent.seq <= upto)
            .order_by(AuditEvent.seq).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()
