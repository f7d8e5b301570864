"""What every part of the review service shares: the configuration and the clock, the one way a
status changes (`UPDATE ... WHERE status IN (allowed) RETURNING`, read back, audited in the same
transaction), the audit and outbox helpers, and the creation of review items and actions.

Every helper takes the caller's Session and never commits (the command, route or job owns the
transaction)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from review import audit, outbox
from review.config import ReviewConfig
from review.errors import InvalidTransition, ReviewError
from review.schema import Action, ReviewItem
from review.states import (
    ACTION_TRANSITIONS,
    AFTER_APPEAL_WINDOW,
    CONTENT_ACTIONS,
    IRREVERSIBLE_ACTIONS,
    ITEM_TRANSITIONS,
    ActionKind,
    ActionStatus,
    ItemKind,
    ItemStatus,
    Transition,
)

#: the actor of everything the service does by itself
SYSTEM = "system:lookfirst"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def forget(s: Session, model: type[Any], ids: Sequence[int]) -> None:
    """Rows changed by a Core statement: expire any copy the session already holds."""
    wanted = set(ids)
    for obj in list(s.identity_map.values()):
        if isinstance(obj, model) and obj.id in wanted:
            s.expire(obj)



def credential_for(reviewer_id: str, credential: str | None) -> str:
    """The credential a verdict or act is recorded under: the caller's, or for in-process
    library callers that name none (trusted code: tests, scripts), `direct:<reviewer id>`."""
    if credential is None:
        return f"direct:{reviewer_id}"
    if not credential or len(credential) > 128 or ":" not in credential:
        raise ReviewError("a credential id is `<kind>:<id>`, at most 128 characters")
    return credential


def actor_data(reviewer_id: str, credential: str | None, delegate: bool) -> dict[str, object]:
    """What an audit event records of who acted through which door."""
    return {"credential": credential_for(reviewer_id, credential), "delegate": delegate}


class Core:
    """The configuration, the clock and the shared writes, handed to each part of the service."""

    def __init__(self, config: ReviewConfig, clock: Callable[[], dt.datetime]) -> None:
        self.config = config
        self.clock = clock

    # ---- audit + outbox, always inside the caller's transaction ---------------------------
    def audit(
        self,
        s: Session,
        *,
        actor: str,
        event: str,
        subject_type: str,
        subject_id: str | int,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        audit.append(s, at=self.clock(), actor=actor, event=event, subject_type=subject_type,
                     subject_id=subject_id, data=dict(data or {}))

    def outbox(self, s: Session, *, topic: str, key: str, payload: Mapping[str, Any]) -> None:
        outbox.enqueue(s, topic=topic, key=key, payload=payload, now=self.clock())

    # ---- transitions -----------------------------------------------------------------------
    def item_transition(
        self,
        s: Session,
        item_id: int,
        name: str,
        *,
        actor: str,
        values: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        extra_where: Sequence[Any] = (),
    ) -> ReviewItem:
        item = self._transition(
            s, ReviewItem, ITEM_TRANSITIONS[name], item_id, actor=actor, values=values,
            extra_where=extra_where, event=f"item.{name}", subject_type="review_item",
            data=lambda _: dict(data or {}),
        )
        assert isinstance(item, ReviewItem)
        return item

    def action_transition(
        self,
        s: Session,
        action_id: int,
        name: str,
        *,
        actor: str,
        values: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Action:
        action = self._transition(
            s, Action, ACTION_TRANSITIONS[name], action_id, actor=actor, values=values,
            event=f"action.{name}", subject_type="action",
            data=lambda row: {"kind": row.kind, **dict(data or {})},
        )
        assert isinstance(action, Action)
        return action

    def _transition(
        self,
        s: Session,
        model: type[ReviewItem] | type[Action],
        t: Transition,
        row_id: int,
        *,
        actor: str,
        values: Mapping[str, Any] | None,
        event: str,
        subject_type: str,
        data: Callable[[Any], Mapping[str, Any]],
        extra_where: Sequence[Any] = (),
    ) -> ReviewItem | Action:
        """The one way a status changes: `UPDATE ... WHERE status IN (allowed) RETURNING`; no
        row back means the transition is not allowed from the current state."""
        row = s.execute(
            update(model)
            .where(model.id == row_id, model.status.in_(t.sources), *extra_where)
            .values(status=t.target, updated_at=self.clock(), **dict(values or {}))
            .returning(model.id)
            .execution_options(synchronize_session=False)
        ).first()
        if row is None:
            what = "review item" if model is ReviewItem else "action"
            raise InvalidTransition(f"{what} {row_id} cannot '{t.name}' from its current state")
        # read back before auditing: the audit event locks the chain's head row until commit
        obj = s.get(model, row_id, populate_existing=True)
        assert isinstance(obj, (ReviewItem, Action))
        self.audit(s, actor=actor, event=event, subject_type=subject_type, subject_id=row_id,
                   data={"to": str(t.target), **dict(data(obj))})
        return obj

    # ---- new rows, each with its audit event ---------------------------------------------
    def new_item(
        self,
        s: Session,
        *,
        decision_id: str,
        kind: ItemKind,
        queue: str,
        severity: str,
        priority: int,
        reviewers_required: int,
        account_id: str,
        content_sha256: str,
        parent_item_id: int | None = None,
    ) -> int:
        values = self.item_values(
            decision_id=decision_id, kind=kind, queue=queue, severity=severity, priority=priority,
            reviewers_required=reviewers_required, account_id=account_id,
            content_sha256=content_sha256, parent_item_id=parent_item_id, now=self.clock())
        item = ReviewItem(**values)
        s.add(item)
        s.flush()
        self.audit(s, actor=SYSTEM, event="item.created", subject_type="review_item",
                   subject_id=item.id, data=item_created(values))
        return item.id

    def item_values(
        self,
        *,
        decision_id: str,
        kind: ItemKind,
        queue: str,
        severity: str,
        priority: int,
        reviewers_required: int,
        account_id: str,
        content_sha256: str,
        now: dt.datetime,
        parent_item_id: int | None = None,
    ) -> dict[str, Any]:
        """A new pending item's row (without its id): `new_item` and intake's batches."""
        rules = self.config.rules(queue)
        return {
            "decision_id": decision_id, "kind": kind, "queue": queue, "severity": severity,
            "priority": priority, "status": ItemStatus.PENDING,
            "reviewers_required": max(reviewers_required, rules.reviewers_required),
            "account_id": account_id, "content_sha256": content_sha256,
            "parent_item_id": parent_item_id, "due_at": now + rules.sla,
            "rank_at": now + rules.sla - priority * self.config.priority_weight,
            "created_at": now, "updated_at": now,
        }

    def new_action(
        self,
        s: Session,
        *,
        decision_id: str,
        item_id: int | None,
        kind: ActionKind,
        account_id: str,
        content_sha256: str,
        status: ActionStatus = ActionStatus.PROPOSED,
        reverses: int | None = None,
        approver: tuple[str, int] | None = None,
        actor: str = SYSTEM,
    ) -> Action:
        values = self.action_values(
            decision_id=decision_id, item_id=item_id, kind=kind, account_id=account_id,
            content_sha256=content_sha256, status=status, reverses=reverses, approver=approver,
            now=self.clock())
        a = Action(**values)
        s.add(a)
        s.flush()
        self.audit(s, actor=actor, event="action.created", subject_type="action", subject_id=a.id,
                   data=action_created(values))
        return a

    def action_values(
        self,
        *,
        decision_id: str,
        item_id: int | None,
        kind: ActionKind,
        account_id: str,
        content_sha256: str,
        now: dt.datetime,
        status: ActionStatus = ActionStatus.PROPOSED,
        reverses: int | None = None,
        approver: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """A new action's row (without its id): `new_action` and intake's batches."""
        return {
            "decision_id": decision_id, "item_id": item_id, "account_id": account_id,
            "content_sha256": content_sha256, "kind": kind,
            "target": "content" if kind in CONTENT_ACTIONS else "account",
            "irreversible": kind in IRREVERSIBLE_ACTIONS,
            "urgent": kind in self.config.urgent_actions, "status": status,
            "approver_1": approver[0] if approver else None,
            "approver_1_verdict_id": approver[1] if approver else None,
            "approver_2": None, "approver_2_verdict_id": None,
            "reverses_action_id": reverses,
            "not_before": now + self.config.appeal_window if kind in AFTER_APPEAL_WINDOW else None,
            "created_at": now, "updated_at": now, "executed_at": None,
        }


def item_created(values: Mapping[str, Any]) -> dict[str, Any]:
    """The data of an `item.created` event, from the item's row."""
    return {"kind": str(values["kind"]), "queue": values["queue"],
            "decision_id": values["decision_id"], "priority": values["priority"],
            "reviewers_required": values["reviewers_required"]}


def action_created(values: Mapping[str, Any]) -> dict[str, Any]:
    """The data of an `action.created` event, from the action's row."""
    return {"kind": str(values["kind"]), "status": str(values["status"]),
            "decision_id": values["decision_id"], "reverses": values["reverses_action_id"]}
