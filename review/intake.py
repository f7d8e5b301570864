"""Intake: one upload and the policy's decision on it, recorded exactly once, routed to its
queue with the policy's proposals, and the one automated action (a reversible content hold)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from review._core import SYSTEM, Core
from review.actions import Actions
from review.schema import Content, Decision, ReviewItem, Upload
from review.states import ActionKind, ActionStatus, ItemKind
from review.values import NewUpload, Recorded, Routing


class Intake:
    def __init__(self, core: Core, actions: Actions) -> None:
        self.core = core
        self.actions = actions

    def find_upload(self, s: Session, *, account_id: str, external_id: str) -> Recorded | None:
        row = s.execute(
            select(Upload, Decision)
            .join(Decision, Decision.upload_id == Upload.id)
            .where(Upload.account_id == account_id, Upload.external_id == external_id)
        ).first()
        if row is None:
            return None
        upload, decision = row
        item_id = s.execute(
            select(ReviewItem.id)
            .where(ReviewItem.decision_id == decision.id)
            .order_by(ReviewItem.id)
            .limit(1)
        ).scalar()
        return Recorded(decision.id, upload.id, decision.outcome, decision.queue, item_id, False)

    def record(self, s: Session, upload: NewUpload, routing: Routing) -> Recorded:
        """Store one upload and its decision; route it.  Exactly once per (account, upload id):
        a repeat returns the stored decision (the caller's transaction decides on the race)."""
        found = self.find_upload(s, account_id=upload.account_id, external_id=upload.external_id)
        if found is not None:
            return found
        core = self.core
        now = core.clock()
        if s.get(Content, upload.sha256) is None:
            s.add(Content(sha256=upload.sha256, mime=upload.mime, width=upload.width,
                          height=upload.height, size_bytes=upload.size_bytes, created_at=now))
            s.flush()  # no ORM relationships: flush in foreign-key order ourselves
        upload_id, decision_id = str(uuid.uuid4()), str(uuid.uuid4())
        s.add(Upload(id=upload_id, content_sha256=upload.sha256, account_id=upload.account_id,
                     external_id=upload.external_id, source=upload.source,
                     context=dict(upload.context), received_at=now))
        s.flush()
        queue = routing.queue if (routing.outcome != "allow" or routing.qa_sample) else None
        s.add(Decision(id=decision_id, upload_id=upload_id, outcome=routing.outcome,
                       model_version=routing.model_version,
                       policy_version=routing.policy_version, scores=dict(routing.scores),
                       reasons=dict(routing.reasons), queue=queue,
                       shadow_scores=[dict(x) for x in routing.shadow_scores] or None,
                       created_at=now))
        s.flush()
        core.audit(
            s, actor=SYSTEM, event="decision.recorded", subject_type="decision",
            subject_id=decision_id,
            data={"outcome": routing.outcome, "queue": queue,
                  "model_version": routing.model_version,
                  "policy_version": routing.policy_version, "scores": dict(routing.scores),
                  "qa_sample": routing.qa_sample},
        )
        item_id: int | None = None
        if routing.outcome in ("hold", "review") or routing.qa_sample:
            assert queue is not None
            kind = ItemKind.INITIAL if routing.outcome != "allow" else ItemKind.QA
            item_id = core.new_item(
                s, decision_id=decision_id, kind=kind, queue=queue, severity=routing.severity,
                priority=routing.priority, reviewers_required=routing.reviewers_required,
                account_id=upload.account_id, content_sha256=upload.sha256,
            )
            # the policy's suggestion: exists only as a proposal until a human verdict approves it
            if kind == ItemKind.INITIAL:
                for kind_ in routing.proposed_actions:
                    core.new_action(
                        s, decision_id=decision_id, item_id=item_id, kind=ActionKind(kind_),
                        account_id=upload.account_id, content_sha256=upload.sha256,
                    )
        if routing.outcome == "hold":
            # the one automated action: a reversible content hold, pending review
            hold = core.new_action(
                s, decision_id=decision_id, item_id=item_id, kind=ActionKind.HOLD_CONTENT,
                account_id=upload.account_id, content_sha256=upload.sha256,
                status=ActionStatus.APPROVED,
            )
            self.actions.execute_now(s, hold, actor=SYSTEM)
        core.outbox(
            s, topic="decision", key=f"decision:{decision_id}",
            payload={"decision_id": decision_id, "upload_id": upload.external_id,
                     "account_id": upload.account_id, "outcome": routing.outcome,
                     "queue": queue, "item_id": item_id},
        )
        return Recorded(decision_id, upload_id, routing.outcome, queue, item_id, True)
