"""The claim in Python, statement by statement: SQLite's path, and PostgreSQL's when a caller
asks for it (the property test holds it to the same answers as `lookfirst_claim`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Integer, Select, Table, bindparam, exists, func, insert, or_, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from review import audit
from review._core import Core, forget
from review.claims.rules import CLAIM, claim_event, exposure_cap_reached
from review.errors import InvalidTransition
from review.reads import Reads
from review.reviewers import Reviewers, no_queues
from review.schema import Exposure, ReviewItem, VerdictRow
from review.states import CLAIMABLE, ItemKind, sql_in
from review.values import ItemView

_ITEM = cast(Table, ReviewItem.__table__)
_VERDICT = cast(Table, VerdictRow.__table__)
_EXPOSURE = cast(Table, Exposure.__table__)

#: the claimable statuses as literal SQL, the very predicate of the partial index
#: ix_review_item_claimable (a bound parameter would keep a generic plan off that index)
CLAIMABLE_SQL = text(f"review_item.status IN {sql_in(set(CLAIMABLE))}")


def _pick_statement() -> Select[Any]:
    """The first claimable rows of one queue for one reviewer, locked, in claim order.  One
    queue at a time: the partial index hands them over in order, with no sort of the queue."""
    reviewer: BindParameter[str] = bindparam("reviewer")
    prior, prior_item = _VERDICT.alias("prior"), _ITEM.alias("prior_item")
    decided_before = (
        select(prior.c.id)
        .join(prior_item, prior_item.c.id == prior.c.item_id)
        .where(prior_item.c.decision_id == _ITEM.c.decision_id, prior.c.reviewer_id == reviewer)
    )
    return (
        select(_ITEM.c.id, _ITEM.c.queue)
        .where(
            _ITEM.c.queue == bindparam("queue"),
            CLAIMABLE_SQL,
            # a second verdict must come from another person
            ~exists().where(_VERDICT.c.item_id == _ITEM.c.id, _VERDICT.c.reviewer_id == reviewer),
            # appeals and escalations go to someone who did not decide this before
            or_(_ITEM.c.kind.not_in([ItemKind.APPEAL, ItemKind.ESCALATION]),
                ~exists(decided_before)),
        )
        .order_by(_ITEM.c.rank_at, _ITEM.c.id)
        .limit(bindparam("lim", type_=Integer))
        .with_for_update(skip_locked=True, of=_ITEM)
    )


# built once: a claim is the hottest transaction
PICK = _pick_statement()
_PICK_ONE = PICK.where(_ITEM.c.id == bindparam("item_id"))
_CLAIM = (
    sql_update(_ITEM)
    .where(_ITEM.c.id.in_(bindparam("ids", expanding=True)),
           _ITEM.c.status.in_(sorted(CLAIM.sources)))
    .values(status=CLAIM.target, claimed_by=bindparam("b_reviewer"),
            lease_expires_at=bindparam("b_until"), updated_at=bindparam("b_now"))
    .returning(*_ITEM.c)
)
_EXPOSURE_SEEN = (
    select(func.count()).select_from(_EXPOSURE)
    .where(_EXPOSURE.c.reviewer_id == bindparam("r"), _EXPOSURE.c.queue == bindparam("q"),
           _EXPOSURE.c.at > bindparam("since"))
)


class LocalClaims:
    def __init__(self, core: Core, reviewers: Reviewers, reads: Reads) -> None:
        self.core = core
        self.reviewers = reviewers
        self.reads = reads

    def lease(self, s: Session, *, reviewer_id: str, queue: str | None, item_id: int | None,
              limit: int, now: dt.datetime) -> list[ItemView]:
        """One claim attempt in the caller's transaction: the leased items' views, or []."""
        config = self.core.config
        queues = self.reviewers.entitled_queues(s, reviewer_id)
        if queue is not None:
            if queue not in queues:
                self.reviewers.require_entitled(s, reviewer_id, queue)  # raises, with the reason
            queues = [queue]
        if not queues:
            raise no_queues(reviewer_id)
        room: dict[str, int] = {}  # exposure left in each capped queue
        for q in queues:
            rules = config.rules(q)
            span = rules.exposure_span()
            if rules.exposure_cap is None or span is None:
                continue
            seen = s.execute(_EXPOSURE_SEEN, {"r": reviewer_id, "q": q,
                                              "since": now - span}).scalar_one()
            room[q] = rules.exposure_cap - seen
        open_queues = [q for q in queues if room.get(q, 1) > 0]
        if not open_queues:
            raise exposure_cap_reached(config, reviewer_id, queues[0])
        ids = self._pick(s, reviewer_id, open_queues, item_id, limit, room)
        if not ids:
            return []
        until = now + config.lease
        rows = list(s.execute(_CLAIM, {"ids": ids, "b_reviewer": reviewer_id, "b_until": until,
                                       "b_now": now}))
        if len(rows) != len(ids):  # the rows are locked by us: cannot happen, refuse if it does
            raise InvalidTransition(f"review items {ids} cannot '{CLAIM.name}' from their state")
        forget(s, ReviewItem, ids)
        rows.sort(key=lambda r: ids.index(r.id))
        exposures = [{"reviewer_id": reviewer_id, "queue": r.queue, "item_id": r.id, "at": now}
                     for r in rows if r.queue in room]
        if exposures:
            s.execute(insert(_EXPOSURE), exposures)
        views = self.reads.views(s, rows, reviewer_id)
        # the audit events come last: the chain's head row stays locked for little more than
        # the commit
        audit.append_many(s, [claim_event(now, reviewer_id, r.id) for r in rows])
        return views

    def _pick(self, s: Session, reviewer_id: str, queues: Sequence[str], item_id: int | None,
              limit: int, room: dict[str, int]) -> list[int]:
        """Lock up to `limit` items this reviewer may claim, most urgent queue first; in capped
        queues no more than the exposure left (`room` is spent as items are taken)."""
        ids: list[int] = []
        for q in _by_urgency(s, queues) if item_id is None else queues:
            want = limit - len(ids)
            if want <= 0:
                break
            if q in room:
                want = min(want, room[q])
                if want <= 0:
                    continue
            params = {"queue": q, "reviewer": reviewer_id, "lim": want}
            if item_id is None:
                got = [r.id for r in s.execute(PICK, params)]
            else:
                got = [r.id for r in s.execute(_PICK_ONE, {**params, "item_id": item_id})]
            if q in room:
                room[q] -= len(got)
            ids.extend(got)
        return ids


def _by_urgency(s: Session, queues: Sequence[str]) -> list[str]:
    """The queues that have claimable items, the one whose first item is due first first
    (one index probe per queue)."""
    if len(queues) == 1:
        return list(queues)
    heads = s.execute(select(*(
        select(func.min(_ITEM.c.rank_at)).where(_ITEM.c.queue == q, CLAIMABLE_SQL)
        .scalar_subquery().label(f"q{i}")
        for i, q in enumerate(queues)
    ))).one()
    return [q for at, q in sorted((at, q) for at, q in zip(heads, queues, strict=True)
                                  if at is not None)]
