"""The user's voice: an appeal of a decision, and the user's reply to a notice or to a
reviewer's request for context; each re-enters review before anything more is done."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from review._core import Core
from review.errors import AppealNotAllowed, NotFound
from review.schema import Action, Appeal, Decision, ReviewItem, Upload
from review.states import ActionStatus, ItemKind, ItemStatus


class Appeals:
    def __init__(self, core: Core) -> None:
        self.core = core

    def appeal(
        self, s: Session, *, decision_id: str, statement: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        core = self.core
        now = core.clock()
        d = s.get(Decision, decision_id)
        if d is None:
            raise NotFound(f"no decision {decision_id}")
        if d.created_at + core.config.appeal_window < now:
            raise AppealNotAllowed("the appeal window for this decision has closed")
        acted = s.execute(
            select(exists().where(Action.decision_id == decision_id,
                                  Action.status != ActionStatus.CANCELLED))
        ).scalar_one()
        if d.outcome == "allow" and not acted:
            raise AppealNotAllowed("nothing was done to this content; there is nothing to appeal")
        open_appeal = s.execute(
            select(Appeal.id).where(Appeal.decision_id == decision_id, Appeal.status == "open")
        ).scalar()
        if open_appeal is not None:
            raise AppealNotAllowed(f"appeal {open_appeal} for this decision is still open")
        upload = s.get(Upload, d.upload_id)
        assert upload is not None
        item_id = core.new_item(
            s, decision_id=decision_id, kind=ItemKind.APPEAL, queue=core.config.appeals_queue,
            severity="appeal", priority=60, reviewers_required=1, account_id=upload.account_id,
            content_sha256=upload.content_sha256,
        )
        ap = Appeal(decision_id=decision_id, item_id=item_id, statement=statement,
                    context=dict(context or {}), status="open", created_at=now)
        s.add(ap)
        s.flush()
        core.audit(s, actor=f"account:{upload.account_id}", event="appeal.filed",
                   subject_type="appeal", subject_id=ap.id,
                   data={"decision_id": decision_id, "item_id": item_id})
        return ap.id

    def provide_context(
        self, s: Session, *, decision_id: str, statement: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """The user's reply to a notice or a request for context re-enters review before any
        action runs.  Returns the review item that will look at it."""
        core = self.core
        d = s.get(Decision, decision_id)
        if d is None:
            raise NotFound(f"no decision {decision_id}")
        upload = s.get(Upload, d.upload_id)
        assert upload is not None
        actor = f"account:{upload.account_id}"
        waiting = s.execute(
            select(ReviewItem.id).where(ReviewItem.decision_id == decision_id,
                                        ReviewItem.status == ItemStatus.AWAITING_CONTEXT)
        ).scalar()
        data = {"statement": statement[:2000], "context": dict(context or {})}
        if waiting is not None:
            core.item_transition(s, waiting, "context_received", actor=actor, data=data)
            return waiting
        pending = s.execute(
            select(exists().where(Action.decision_id == decision_id,
                                  Action.status == ActionStatus.NOTIFIED))
        ).scalar_one()
        if not pending:
            raise AppealNotAllowed("no notice is waiting for a reply; file an appeal instead")
        item_id = core.new_item(
            s, decision_id=decision_id, kind=ItemKind.CONTEXT, queue=core.config.appeals_queue,
            severity="context", priority=80, reviewers_required=1, account_id=upload.account_id,
            content_sha256=upload.content_sha256,
        )
        s.add(Appeal(decision_id=decision_id, item_id=item_id, statement=statement,
                     context=dict(context or {}), status="open", created_at=core.clock()))
        core.audit(s, actor=actor, event="context.received", subject_type="review_item",
                   subject_id=item_id, data=data)
        return item_id
