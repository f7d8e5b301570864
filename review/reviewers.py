"""Reviewers and what they are entitled to: registration, queue membership, the role a queue
needs, and the refusals that say why a reviewer may not act."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from review._core import SYSTEM, Core
from review.config import ReviewConfig
from review.errors import NotEntitled, UnknownReviewer
from review.schema import Reviewer, ReviewerQueue

_REVIEWER = cast(Table, Reviewer.__table__)
_MEMBER = cast(Table, ReviewerQueue.__table__)
_ENTITLED = (
    select(_REVIEWER.c.active, _REVIEWER.c.roles, _MEMBER.c.queue)
    .select_from(_REVIEWER.outerjoin(_MEMBER, _MEMBER.c.reviewer_id == _REVIEWER.c.id))
    .where(_REVIEWER.c.id == bindparam("r"))
)


def unknown_reviewer(reviewer_id: str) -> UnknownReviewer:
    return UnknownReviewer(f"reviewer {reviewer_id!r} is not registered or not active")


def no_queues(reviewer_id: str) -> NotEntitled:
    return NotEntitled(f"reviewer {reviewer_id!r} has no queues")


def not_entitled(config: ReviewConfig, reviewer_id: str, queue: str) -> NotEntitled:
    rules = config.queues.get(queue)
    need = f" (needs role {rules.role!r})" if rules and rules.role else ""
    return NotEntitled(f"reviewer {reviewer_id!r} is not entitled to queue {queue!r}{need}")


class Reviewers:
    def __init__(self, core: Core) -> None:
        self.core = core

    def add_reviewer(
        self,
        s: Session,
        *,
        reviewer_id: str,
        queues: Sequence[str],
        roles: Sequence[str] = (),
        display_name: str | None = None,
        actor: str = SYSTEM,
    ) -> None:
        for q in queues:
            self.core.config.rules(q)
        existing = s.get(Reviewer, reviewer_id)
        if existing is None:
            s.add(Reviewer(id=reviewer_id, display_name=display_name or reviewer_id,
                           roles=sorted(set(roles)), active=True, created_at=self.core.clock()))
        else:
            existing.roles = sorted(set(existing.roles) | set(roles))
            existing.active = True
        s.flush()
        have = set(s.execute(
            select(ReviewerQueue.queue).where(ReviewerQueue.reviewer_id == reviewer_id)
        ).scalars().all())
        for q in sorted(set(queues) - have):
            s.add(ReviewerQueue(reviewer_id=reviewer_id, queue=q))
        self.core.audit(s, actor=actor, event="reviewer.granted", subject_type="reviewer",
                        subject_id=reviewer_id,
                        data={"queues": sorted(queues), "roles": sorted(roles)})

    def list_reviewers(self, s: Session) -> list[dict[str, Any]]:
        out = []
        for r in s.execute(select(Reviewer).order_by(Reviewer.id)).scalars():
            queues = s.execute(
                select(ReviewerQueue.queue).where(ReviewerQueue.reviewer_id == r.id)
            ).scalars()
            out.append({"id": r.id, "roles": r.roles, "active": r.active, "queues": sorted(queues)})
        return out

    def entitled_queues(self, s: Session, reviewer_id: str) -> list[str]:
        """The queues a reviewer may claim, see and decide in: membership and the queue's role."""
        rows = s.execute(_ENTITLED, {"r": reviewer_id}).all()
        if not rows or not rows[0].active:
            raise unknown_reviewer(reviewer_id)
        roles = rows[0].roles
        out = []
        for r in rows:
            rules = self.core.config.queues.get(r.queue) if r.queue is not None else None
            if rules is not None and (rules.role is None or rules.role in roles):
                out.append(r.queue)
        return sorted(out)

    def require_entitled(self, s: Session, reviewer_id: str, queue: str) -> None:
        if queue not in self.entitled_queues(s, reviewer_id):
            raise not_entitled(self.core.config, reviewer_id, queue)
