"""What people read: a reviewer's view of review items (with the no-anchoring rule), the
statement of reasons for a decision, queue statistics, and the audited reveal of an original."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, func, select
from sqlalchemy.orm import Session

from review._core import Core, actor_data
from review.actions import Actions
from review.errors import NotFound
from review.reviewers import Reviewers
from review.schema import Action, Appeal, Decision, ReviewItem, Upload, VerdictRow
from review.states import OPEN_ITEM_STATUSES, ActionStatus, ItemKind, ItemStatus
from review.values import ItemView

_ITEM = cast(Table, ReviewItem.__table__)
_VERDICT = cast(Table, VerdictRow.__table__)
_DECISION = cast(Table, Decision.__table__)
_UPLOAD = cast(Table, Upload.__table__)
_ACTION = cast(Table, Action.__table__)
_APPEAL = cast(Table, Appeal.__table__)
# built once: every claim reads its items' views with them
_VIEW_DECISIONS = (
    select(_DECISION.c.id, _DECISION.c.outcome, _DECISION.c.scores, _DECISION.c.reasons,
           _UPLOAD.c.context)
    .join(_UPLOAD, _UPLOAD.c.id == _DECISION.c.upload_id)
    .where(_DECISION.c.id.in_(bindparam("ids", expanding=True)))
)
_VIEW_VERDICTS = (
    select(_VERDICT.c.item_id, _VERDICT.c.reviewer_id, _VERDICT.c.verdict,
           _VERDICT.c.categories, _VERDICT.c.note, _VERDICT.c.created_at)
    .where(_VERDICT.c.item_id.in_(bindparam("ids", expanding=True)))
    .order_by(_VERDICT.c.id)
)
_VIEW_PROPOSED = (
    select(_ACTION.c.decision_id, _ACTION.c.kind)
    .where(_ACTION.c.decision_id.in_(bindparam("ids", expanding=True)),
           _ACTION.c.status == ActionStatus.PROPOSED)
)
_VIEW_APPEALS = (
    select(_APPEAL.c.item_id, _APPEAL.c.statement)
    .where(_APPEAL.c.item_id.in_(bindparam("ids", expanding=True)))
)


def assemble_views(
    items: Sequence[Any],
    decisions: Mapping[str, Any],
    verdicts: Mapping[int, Sequence[Any]],
    proposed: Mapping[str, set[str]],
    appeals: Mapping[int, str],
    viewer: str | None,
) -> list[ItemView]:
    """The views themselves, from what was read (by `Reads.views`, or by the claim function):
    the one place the no-anchoring rule lives."""
    out = []
    for it in items:
        d = decisions[it.decision_id]
        own = verdicts.get(it.id, [])
        shown: list[dict[str, Any]] = []
        open_ = it.status in OPEN_ITEM_STATUSES
        for v in own:
            # no anchoring: while the item is open, a reviewer sees only their own verdict
            if open_ and viewer is not None and v.reviewer_id != viewer:
                continue
            shown.append({"reviewer": v.reviewer_id, "verdict": v.verdict,
                          "categories": v.categories, "note": v.note,
                          "at": v.created_at.isoformat()})
        if it.kind == ItemKind.ESCALATION and it.parent_item_id is not None:
            for v in verdicts.get(it.parent_item_id, []):
                shown.append({"reviewer": v.reviewer_id, "verdict": v.verdict,
                              "categories": v.categories, "note": v.note,
                              "at": v.created_at.isoformat(),
                              "from_item": it.parent_item_id})
        out.append(ItemView(
            id=it.id, kind=it.kind, queue=it.queue, status=it.status, severity=it.severity,
            priority=it.priority, reviewers_required=it.reviewers_required,
            verdicts_in=len(own), account_id=it.account_id, content_sha256=it.content_sha256,
            decision_id=it.decision_id, outcome=d.outcome, scores=d.scores, reasons=d.reasons,
            context=d.context, due_at=it.due_at, created_at=it.created_at,
            claimed_by=it.claimed_by, lease_expires_at=it.lease_expires_at,
            proposed_actions=sorted(proposed.get(it.decision_id, ())), verdicts=shown,
            appeal_statement=appeals.get(it.id),
        ))
    return out


class Reads:
    def __init__(self, core: Core, reviewers: Reviewers, actions: Actions) -> None:
        self.core = core
        self.reviewers = reviewers
        self.actions = actions

    # ---- review items ----------------------------------------------------------------------
    def list_items(
        self,
        s: Session,
        *,
        viewer: str | None = None,
        queue: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[ItemView]:
        q = select(ReviewItem)
        if viewer is not None:
            q = q.where(ReviewItem.queue.in_(self.reviewers.entitled_queues(s, viewer)))
        if queue is not None:
            q = q.where(ReviewItem.queue == queue)
        if statuses:
            q = q.where(ReviewItem.status.in_(list(statuses)))
        q = q.order_by(ReviewItem.rank_at, ReviewItem.id).limit(limit)
        return self.views(s, s.execute(q).scalars().all(), viewer)

    def show(self, s: Session, item_id: int, *, viewer: str | None) -> ItemView:
        item = s.get(ReviewItem, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if viewer is not None:
            self.reviewers.require_entitled(s, viewer, item.queue)
        return self.views(s, [item], viewer)[0]

    def views(self, s: Session, items: Sequence[Any], viewer: str | None) -> list[ItemView]:
        """What a reviewer sees of each item (ORM objects or rows with the same names), read
        in four queries whatever the number of items."""
        if not items:
            return []
        decision_ids = sorted({it.decision_id for it in items})
        decisions = {r.id: r for r in s.execute(_VIEW_DECISIONS, {"ids": decision_ids})}
        verdict_items = {it.id for it in items} | {
            it.parent_item_id for it in items
            if it.kind == ItemKind.ESCALATION and it.parent_item_id is not None
        }
        verdicts: dict[int, list[Any]] = {}
        for r in s.execute(_VIEW_VERDICTS, {"ids": sorted(verdict_items)}):
            verdicts.setdefault(r.item_id, []).append(r)
        proposed: dict[str, set[str]] = {}
        for r in s.execute(_VIEW_PROPOSED, {"ids": decision_ids}):
            proposed.setdefault(r.decision_id, set()).add(r.kind)
        appeals: dict[int, str] = {}
        appeal_items = sorted(it.id for it in items if it.kind == ItemKind.APPEAL)
        if appeal_items:
            appeals = {r.item_id: r.statement
                       for r in s.execute(_VIEW_APPEALS, {"ids": appeal_items})}
        return assemble_views(items, decisions, verdicts, proposed, appeals, viewer)

    def record_reveal(self, s: Session, *, item_id: int, reviewer_id: str, reason: str,
                      credential: str | None = None, delegate: bool = False) -> None:
        """Seeing the original (unblurred) image is an audited act of an entitled reviewer."""
        item = s.get(ReviewItem, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        self.reviewers.require_entitled(s, reviewer_id, item.queue)
        self.core.audit(s, actor=reviewer_id, event="item.reveal_original",
                        subject_type="review_item", subject_id=item_id,
                        data={"reason": reason, **actor_data(reviewer_id, credential, delegate)})

    # ---- decisions -------------------------------------------------------------------------
    def statement_of_reasons(self, s: Session, decision_id: str) -> dict[str, Any]:
        """One record a user notice or an auditor can read: detected, model, policy, context,
        who reviewed, what was decided, how to appeal."""
        d = s.get(Decision, decision_id)
        if d is None:
            raise NotFound(f"no decision {decision_id}")
        upload = s.get(Upload, d.upload_id)
        assert upload is not None
        items = s.execute(
            select(ReviewItem).where(ReviewItem.decision_id == decision_id).order_by(ReviewItem.id)
        ).scalars().all()
        reviews = []
        for it in items:
            vs = s.execute(
                select(VerdictRow).where(VerdictRow.item_id == it.id).order_by(VerdictRow.id)
            ).scalars().all()
            closed = it.status not in OPEN_ITEM_STATUSES
            reviews.append({
                "item_id": it.id, "kind": it.kind, "queue": it.queue, "status": it.status,
                "resolution": it.resolution,
                "verdicts": [
                    {"reviewer": v.reviewer_id, "verdict": v.verdict, "categories": v.categories,
                     "note": v.note, "at": v.created_at.isoformat(),
                     # a delegate (a console, the CLI) recorded it for the reviewer
                     "via_delegate": v.via_delegate}
                    for v in vs
                ] if closed else [],
            })
        appeals = [
            {"id": a.id, "status": a.status, "statement": a.statement,
             "filed_at": a.created_at.isoformat()}
            for a in s.execute(select(Appeal).where(Appeal.decision_id == decision_id)).scalars()
        ]
        window_ends = d.created_at + self.core.config.appeal_window
        cli_appeal = f"lookfirst review appeal {d.id} --statement \"...\""
        return {
            "decision_id": d.id,
            "upload": {"id": upload.external_id, "account_id": upload.account_id,
                       "content_sha256": upload.content_sha256,
                       "received_at": upload.received_at.isoformat()},
            "outcome": d.outcome,
            "queue": d.queue,
            "detected": d.scores,
            "model_version": d.model_version,
            "policy_version": d.policy_version,
            "rules": d.reasons.get("rules", []),
            "context": upload.context,
            "context_effects": d.reasons.get("routing", []),
            # the hash-bank entry that routed it (a clearance: who cleared it, when, which item)
            "bank_match": d.reasons.get("bank"),
            "reviews": reviews,
            "actions": self.actions.list_actions(s, decision_id=decision_id),
            "appeals": appeals,
            "how_to_appeal": {
                "until": window_ends.isoformat(),
                "how": f"POST /v1/appeals with decision_id {d.id} and your own context (on the "
                       f"command line: {cli_appeal}); a reviewer who did not decide it before "
                       "will look again.",
                "api": f"POST /v1/appeals {{\"decision_id\": \"{d.id}\", \"statement\": "
                       "\"...\"}",
                "cli": cli_appeal,
            },
        }

    def stats(self, s: Session) -> list[dict[str, Any]]:
        now = self.core.clock()
        queues = self.core.config.queues
        rows = s.execute(
            select(
                ReviewItem.queue,
                func.count(),
                func.min(ReviewItem.created_at),
                func.sum(func.cast(ReviewItem.due_at < now, type_=Integer)),
                func.sum(func.cast(ReviewItem.status == ItemStatus.CLAIMED, type_=Integer)),
            )
            .where(ReviewItem.status.in_(OPEN_ITEM_STATUSES))
            .group_by(ReviewItem.queue)
        ).all()
        by_queue = {r[0]: r for r in rows}
        out = []
        for q in sorted(set(queues) | set(by_queue)):
            r = by_queue.get(q)
            oldest = r[2] if r else None
            out.append({
                "queue": q,
                "depth": int(r[1]) if r else 0,
                "claimed": int(r[4] or 0) if r else 0,
                "oldest_age_s": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
                "breaches": int(r[3] or 0) if r else 0,
                "sla_s": queues[q].sla.total_seconds() if q in queues else None,
            })
        return out
