"""Why a claim found nothing: the refusal that says why and what to do.

Only a claim that found nothing comes here (never the hot path): for a named item, the one
rule that keeps this reviewer from it (no such item, not their queue, the queue's role, the
item's state, their own verdict on it, the fresh-eyes rule on appeals and escalations); for a
claim from the reviewer's queues, what waits where they cannot take it, and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from review.config import ReviewConfig
from review.errors import (
    AlreadyDecided,
    FreshEyesRequired,
    InvalidTransition,
    NotEntitled,
    NotFound,
    ReviewError,
)
from review.reviewers import grant_hint, lacking_roles
from review.schema import Reviewer, ReviewerQueue, ReviewItem, VerdictRow
from review.states import CLAIMABLE, ItemKind, ItemStatus

#: kinds of item that must go to someone who did not decide the original
_FRESH_EYES = (ItemKind.APPEAL, ItemKind.ESCALATION)


def _decided_before(s: Session, reviewer_id: str, decision_id: str) -> bool:
    """Whether the reviewer gave a verdict on any item of this decision."""
    return s.execute(
        select(func.count()).select_from(VerdictRow)
        .join(ReviewItem, ReviewItem.id == VerdictRow.item_id)
        .where(ReviewItem.decision_id == decision_id, VerdictRow.reviewer_id == reviewer_id)
    ).scalar_one() > 0


def _fresh_eyes(item_id: int, kind: str, reviewer_id: str) -> FreshEyesRequired:
    what = "appeal" if kind == ItemKind.APPEAL else "escalation"
    return FreshEyesRequired(
        f"review item {item_id} is an {what} of a decision {reviewer_id!r} decided: you decided "
        f"the original; another reviewer must take the {what} (the fresh-eyes rule)")


def explain_item(s: Session, config: ReviewConfig, reviewer_id: str, item_id: int,
                 members: Sequence[str], roles: Sequence[str], fallback: ReviewError
                 ) -> ReviewError:
    item = s.get(ReviewItem, item_id)
    if item is None:
        return NotFound(f"no review item {item_id}")
    q = item.queue
    if q not in members:
        return NotEntitled(
            f"review item {item_id} is in queue {q!r}, and {reviewer_id!r} is not a member of "
            f"it; an operator can grant it: "
            f"{grant_hint(reviewer_id, q, config.queues[q].role if q in config.queues else None)}")
    role = lacking_roles(config, [q], roles).get(q)
    if role is not None:
        return NotEntitled(
            f"review item {item_id} is in queue {q!r}, which needs role {role!r} that "
            f"{reviewer_id!r} lacks; an operator can grant it: "
            f"{grant_hint(reviewer_id, role=role)}")
    if item.status not in CLAIMABLE:
        if item.status == ItemStatus.CLAIMED:
            until = f" until {item.lease_expires_at:%H:%M:%S} UTC" if item.lease_expires_at else ""
            return InvalidTransition(
                f"review item {item_id} is claimed by {item.claimed_by!r}{until}; claim another "
                f"item, or this one once the lease is released or runs out")
        return InvalidTransition(f"review item {item_id} is {item.status}: there is nothing "
                                 "left to claim on it")
    own = s.execute(select(func.count()).select_from(VerdictRow).where(
        VerdictRow.item_id == item_id, VerdictRow.reviewer_id == reviewer_id)).scalar_one()
    if own:
        return AlreadyDecided(f"{reviewer_id!r} has already given a verdict on review item "
                              f"{item_id}; the next verdict must come from another reviewer")
    if item.kind in _FRESH_EYES and _decided_before(s, reviewer_id, item.decision_id):
        return _fresh_eyes(item_id, item.kind, reviewer_id)
    return fallback


def explain_queues(s: Session, config: ReviewConfig, reviewer_id: str, queue: str | None,
                   members: Sequence[str], roles: Sequence[str], fallback: ReviewError
                   ) -> ReviewError:
    looked = [queue] if queue is not None else list(members)
    if not members:
        return type(fallback)(
            f"reviewer {reviewer_id!r} is a member of no queue; an operator can grant one: "
            f"{grant_hint(reviewer_id, '<queue>')}")
    waiting: dict[str, int] = dict(s.execute(
        select(ReviewItem.queue, func.count())
        .where(ReviewItem.queue.in_(looked), ReviewItem.status.in_(sorted(CLAIMABLE)))
        .group_by(ReviewItem.queue)).all())
    hints: list[str] = []
    blocked = lacking_roles(config, looked, roles)
    for q, role in sorted(blocked.items()):
        if waiting.get(q):
            n = waiting[q]
            hints.append(f"{_items(n)} {_verb(n, 'wait')} in queue {q!r}, which needs role "
                         f"{role!r} that {reviewer_id!r} lacks (an operator can grant it: "
                         f"{grant_hint(reviewer_id, role=role)})")
    open_queues = [q for q in looked if q not in blocked and waiting.get(q)]
    if open_queues:
        others = _others_only(s, reviewer_id, open_queues)
        if others:
            hints.append(f"{_items(others)} in {reviewer_id!r}'s queues "
                         f"{_verb(others, 'need')} another reviewer: they already hold "
                         "this reviewer's verdict, or are appeals or escalations of decisions "
                         "this reviewer decided (the fresh-eyes rule)")
    if not hints:
        return fallback
    return type(fallback)(f"{fallback.detail.rstrip('.')}; " + "; ".join(hints))


def _items(n: int) -> str:
    return f"{n} item{'s' if n != 1 else ''}"


def _verb(n: int, verb: str) -> str:
    return f"{verb}s" if n == 1 else verb


def _others_only(s: Session, reviewer_id: str, queues: Sequence[str]) -> int:
    """How many claimable items of these queues this reviewer may not take because of their
    own verdicts (on the item, or on the decision an appeal or escalation reviews)."""
    rows: list[Any] = list(s.execute(
        select(ReviewItem.id, ReviewItem.kind, ReviewItem.decision_id)
        .where(ReviewItem.queue.in_(queues), ReviewItem.status.in_(sorted(CLAIMABLE)))
        .limit(200)))
    n = 0
    for item_id, kind, decision_id in rows:
        own = s.execute(select(func.count()).select_from(VerdictRow).where(
            VerdictRow.item_id == item_id, VerdictRow.reviewer_id == reviewer_id)).scalar_one()
        if own or (kind in _FRESH_EYES and _decided_before(s, reviewer_id, decision_id)):
            n += 1
    return n


def explain(s: Session, config: ReviewConfig, *, reviewer_id: str, queue: str | None,
            item_id: int | None, fallback: ReviewError) -> ReviewError:
    """The refusal for a claim that found nothing: `fallback` with its reason spelled out, or
    a more specific error; `fallback` itself when nothing more can be said."""
    reviewer = s.get(Reviewer, reviewer_id)
    if reviewer is None or not reviewer.active:
        return fallback
    members = sorted(s.execute(select(ReviewerQueue.queue)
                               .where(ReviewerQueue.reviewer_id == reviewer_id)).scalars())
    roles = list(reviewer.roles)
    if item_id is not None:
        return explain_item(s, config, reviewer_id, item_id, members, roles, fallback)
    return explain_queues(s, config, reviewer_id, queue, members, roles, fallback)
