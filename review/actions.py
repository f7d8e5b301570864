"""Actions after approval: notice before enforcement, execution through the outbox, the
reversal of what a person overturned, and the listing of actions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from review._core import SYSTEM, Core, actor_data
from review.errors import ActionNotApproved, ActionNotDue, InvalidTransition, NotFound
from review.schema import Action, ReviewItem, VerdictRow
from review.states import (
    AUTOMATED_ACTIONS,
    OPEN_ITEM_STATUSES,
    REVERSAL,
    ActionKind,
    ActionStatus,
    ItemKind,
)
from review.values import action_dict

#: reversals are restorative: they run at once, with no notice period
REVERSAL_TARGETS = frozenset(REVERSAL.values())


class Actions:
    def __init__(self, core: Core) -> None:
        self.core = core

    # ---- after approval ----------------------------------------------------------------------
    def schedule(self, s: Session, a: Action) -> Action:
        """After approval: account actions other than urgent ones first notify the user, who
        may answer with their context before the action runs; erasure waits for the window."""
        core = self.core
        now = core.clock()
        if a.target == "account" and not a.urgent and a.kind not in REVERSAL_TARGETS:
            deadline = now + core.config.notice_period
            if a.not_before is not None:
                deadline = max(deadline, a.not_before)
            a = core.action_transition(s, a.id, "notify", actor=SYSTEM,
                                       values={"not_before": deadline},
                                       data={"notice_until": deadline.isoformat()})
            core.outbox(
                s, topic="notice", key=f"notice:{a.id}",
                payload={"action_id": a.id, "kind": a.kind, "account_id": a.account_id,
                         "decision_id": a.decision_id, "reply_until": deadline.isoformat()},
            )
        return a

    def overturn(self, s: Session, item: ReviewItem, by: VerdictRow) -> list[Action]:
        """A person found no violation: cancel what has not run, reverse what has."""
        core = self.core
        out: list[Action] = []
        for a in s.execute(
            select(Action).where(Action.decision_id == item.decision_id).order_by(Action.id)
        ).scalars().all():
            if a.status in (ActionStatus.PROPOSED, ActionStatus.APPROVED, ActionStatus.NOTIFIED):
                core.action_transition(s, a.id, "cancel", actor=by.reviewer_id,
                                       data={"reason": f"overturned by item {item.id}"})
            elif (
                a.status == ActionStatus.EXECUTED
                and a.reverses_action_id is None
                and ActionKind(a.kind) in REVERSAL
            ):
                r = core.new_action(
                    s, decision_id=a.decision_id, item_id=item.id,
                    kind=REVERSAL[ActionKind(a.kind)],
                    account_id=a.account_id, content_sha256=a.content_sha256,
                    reverses=a.id, approver=(by.reviewer_id, by.id), actor=by.reviewer_id,
                )
                r = core.action_transition(s, r.id, "approve", actor=by.reviewer_id)
                out.append(r)
        return out

    # ---- execution -----------------------------------------------------------------------
    def execute(self, s: Session, *, action_id: int, actor: str,
                credential: str | None = None, delegate: bool = False) -> Action:
        a = s.execute(select(Action).where(Action.id == action_id).with_for_update()).scalar()
        if a is None:
            raise NotFound(f"no action {action_id}")
        if a.status == ActionStatus.PROPOSED:
            raise ActionNotApproved(
                f"action {action_id} ({a.kind}) is only proposed: no reviewer has approved it"
            )
        if a.status not in (ActionStatus.APPROVED, ActionStatus.NOTIFIED):
            raise InvalidTransition(f"action {action_id} is {a.status}; nothing to execute")
        now = self.core.clock()
        if a.not_before is not None and a.not_before > now:
            raise ActionNotDue(f"action {action_id} ({a.kind}) is not due before "
                               f"{a.not_before.isoformat()}")
        if self._under_review(s, a.decision_id):
            raise ActionNotDue(f"action {action_id}: the decision is under review again")
        return self.execute_now(s, a, actor=actor, credential=credential, delegate=delegate)

    def _under_review(self, s: Session, decision_id: str) -> bool:
        return s.execute(
            select(
                exists().where(
                    ReviewItem.decision_id == decision_id,
                    ReviewItem.status.in_(OPEN_ITEM_STATUSES),
                    ReviewItem.kind != ItemKind.QA,
                    # the initial item of a held decision is what the hold waits for
                )
            )
        ).scalar_one()

    def execute_now(self, s: Session, a: Action, *, actor: str, credential: str | None = None,
                    delegate: bool = False) -> Action:
        """Execute an approved action whose checks the caller has made (or the automated hold).
        The audit events record the credential acting, when the caller names one."""
        core = self.core
        if a.kind not in AUTOMATED_ACTIONS and a.approver_1 is None:  # belt and braces; the
            raise ActionNotApproved()  # database refuses it too (ck_action_human_approved)
        # a person's or an operator's door; lookfirst's own steps (the automated hold, the
        # scheduled executor) name none, and their events stay as they were
        who = actor_data(actor, credential, delegate) if credential is not None else {}
        a = core.action_transition(s, a.id, "execute", actor=actor,
                                   values={"executed_at": core.clock()}, data=who)
        if a.reverses_action_id is not None:
            core.action_transition(s, a.reverses_action_id, "reverse", actor=actor,
                                   data={"by_action": a.id, **who})
        core.outbox(
            s, topic="action", key=f"action:{a.id}",
            payload={**action_dict(a), "statement_url": f"/v1/decisions/{a.decision_id}"},
        )
        return a

    def execute_due(self, s: Session, *, actor: str = SYSTEM, limit: int = 100) -> list[Action]:
        """Execute every approved action that is due and whose decision no one is reviewing."""
        now = self.core.clock()
        busy = exists().where(
            ReviewItem.decision_id == Action.decision_id,
            ReviewItem.status.in_(OPEN_ITEM_STATUSES),
            ReviewItem.kind != ItemKind.QA,
        )
        due = s.execute(
            select(Action)
            .where(
                Action.status.in_([ActionStatus.APPROVED, ActionStatus.NOTIFIED]),
                or_(Action.not_before.is_(None), Action.not_before <= now),
                ~busy,
            )
            .order_by(Action.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Action)
        ).scalars().all()
        return [self.execute_now(s, a, actor=actor) for a in due]

    def list_actions(
        self, s: Session, *, status: str | None = None, decision_id: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        q = select(Action).order_by(Action.id).limit(limit)
        if status:
            q = q.where(Action.status == status)
        if decision_id:
            q = q.where(Action.decision_id == decision_id)
        return [action_dict(a) for a in s.execute(q).scalars()]
