"""Reviewers and what they are entitled to: registration, queue membership, the role a queue
needs, and the refusals that say why a reviewer may not act."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.orm import Session

from review._core import SYSTEM, Core
from review.config import ReviewConfig
from review.errors import NoQueues, NotEntitled, UnknownReviewer
from review.schema import Reviewer, ReviewerQueue

_REVIEWER = cast(Table, Reviewer.__table__)
_MEMBER = cast(Table, ReviewerQueue.__table__)
_ENTITLED = (
    select(_REVIEWER.c.active, _REVIEWER.c.roles, _MEMBER.c.queue)
    .select_from(_REVIEWER.outerjoin(_MEMBER, _MEMBER.c.reviewer_id == _REVIEWER.c.id))
    .where(_REVIEWER.c.id == bindparam("r"))
)


def lacking_roles(config: ReviewConfig, queues: Sequence[str], roles: Sequence[str]
                  ) -> dict[str, str]:
    """Of these queues, those that need a role not among `roles`: queue -> the role."""
    out = {}
    for q in queues:
        rules = config.queues.get(q)
        if rules is not None and rules.role is not None and rules.role not in roles:
            out[q] = rules.role
    return out


def unknown_reviewer(reviewer_id: str) -> UnknownReviewer:
    return UnknownReviewer(f"reviewer {reviewer_id!r} is not registered or not active")


def no_queues(reviewer_id: str) -> NoQueues:
    return NoQueues(f"reviewer {reviewer_id!r} has no queues they may claim from "
                       f"(see: lookfirst reviewers show {reviewer_id})")


def grant_hint(reviewer_id: str, queue: str | None = None, role: str | None = None) -> str:
    """The command an operator runs to entitle a reviewer."""
    return " ".join(["lookfirst reviewers grant", reviewer_id]
                    + (["--queue", queue] if queue else []) + (["--role", role] if role else []))


def not_entitled(config: ReviewConfig, reviewer_id: str, queue: str) -> NotEntitled:
    rules = config.queues.get(queue)
    role = rules.role if rules else None
    need = f" (needs role {role!r})" if role else ""
    return NotEntitled(f"reviewer {reviewer_id!r} is not entitled to queue {queue!r}{need}; "
                       f"an operator can grant it: {grant_hint(reviewer_id, queue, role)}")


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
        """Register a reviewer (active) with these queues and roles; for one already
        registered, grant them as well (and make them active again)."""
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
        self._join(s, reviewer_id, queues)
        self.core.audit(s, actor=actor, event="reviewer.granted", subject_type="reviewer",
                        subject_id=reviewer_id,
                        data={"queues": sorted(queues), "roles": sorted(roles)})

    def grant(self, s: Session, *, reviewer_id: str, queues: Sequence[str] = (),
              roles: Sequence[str] = (), actor: str = SYSTEM) -> None:
        """Give a registered reviewer more queues and/or roles (each independently)."""
        for q in queues:
            self.core.config.rules(q)
        r = self._registered(s, reviewer_id)
        r.roles = sorted(set(r.roles) | set(roles))
        s.flush()
        self._join(s, reviewer_id, queues)
        self.core.audit(s, actor=actor, event="reviewer.granted", subject_type="reviewer",
                        subject_id=reviewer_id,
                        data={"queues": sorted(set(queues)), "roles": sorted(set(roles))})

    def revoke(self, s: Session, *, reviewer_id: str, queues: Sequence[str] = (),
               roles: Sequence[str] = (), actor: str = SYSTEM) -> None:
        """Take queues and/or roles away from a reviewer (what they lack stays lacking)."""
        r = self._registered(s, reviewer_id)
        r.roles = sorted(set(r.roles) - set(roles))
        if queues:
            s.execute(delete(ReviewerQueue).where(ReviewerQueue.reviewer_id == reviewer_id,
                                                  ReviewerQueue.queue.in_(sorted(set(queues)))))
        s.flush()
        self.core.audit(s, actor=actor, event="reviewer.revoked", subject_type="reviewer",
                        subject_id=reviewer_id,
                        data={"queues": sorted(set(queues)), "roles": sorted(set(roles))})

    def deactivate(self, s: Session, *, reviewer_id: str, actor: str = SYSTEM) -> None:
        """A reviewer who leaves: they may claim, see and decide nothing more (their queues
        and roles are kept for the record; `add` makes them active again)."""
        r = self._registered(s, reviewer_id)
        r.active = False
        s.flush()
        self.core.audit(s, actor=actor, event="reviewer.deactivated", subject_type="reviewer",
                        subject_id=reviewer_id, data={})

    def _registered(self, s: Session, reviewer_id: str) -> Reviewer:
        r = s.get(Reviewer, reviewer_id)
        if r is None:
            raise UnknownReviewer(f"reviewer {reviewer_id!r} is not registered "
                                  f"(register them first: lookfirst reviewers add {reviewer_id})")
        return r

    def _join(self, s: Session, reviewer_id: str, queues: Sequence[str]) -> None:
        have = set(s.execute(
            select(ReviewerQueue.queue).where(ReviewerQueue.reviewer_id == reviewer_id)
        ).scalars().all())
        for q in sorted(set(queues) - have):
            s.add(ReviewerQueue(reviewer_id=reviewer_id, queue=q))
        s.flush()

    def list_reviewers(self, s: Session, reviewer_id: str | None = None
                       ) -> list[dict[str, Any]]:
        """Each reviewer (or just `reviewer_id`): roles, queues, and what they can claim:
        `can_claim` (their queues whose role they hold, none when inactive) and `blocked`
        (their queues whose role they lack, with the role)."""
        q = select(Reviewer).order_by(Reviewer.id)
        if reviewer_id is not None:
            q = q.where(Reviewer.id == reviewer_id)
        out = []
        for r in s.execute(q).scalars():
            queues = sorted(s.execute(
                select(ReviewerQueue.queue).where(ReviewerQueue.reviewer_id == r.id)
            ).scalars())
            blocked = lacking_roles(self.core.config, queues, r.roles)
            can = [x for x in queues if x not in blocked and x in self.core.config.queues]
            out.append({"id": r.id, "display_name": r.display_name, "roles": r.roles,
                        "active": r.active, "queues": queues,
                        "can_claim": can if r.active else [],
                        "blocked": [{"queue": x, "needs_role": role}
                                    for x, role in blocked.items()]})
        if reviewer_id is not None and not out:
            self._registered(s, reviewer_id)  # raises: no such reviewer
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
