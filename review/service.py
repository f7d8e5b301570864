"""The review service: one set of rules behind the CLI, the API and the Label Studio sync.

Every method takes the caller's Session and never commits (the command, route or job owns the
transaction).  Every state change is an `UPDATE ... WHERE status IN (allowed) RETURNING` from
the transition table in `review.states`, and writes its audit event in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Select,
    Table,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from review import audit, banks
from review.errors import (
    ActionNotApproved,
    ActionNotDue,
    AlreadyDecided,
    AppealNotAllowed,
    ExposureCapReached,
    InvalidTransition,
    NotClaimant,
    NotEntitled,
    NotFound,
    NothingToClaim,
    ReviewError,
    UnknownReviewer,
)
from review.schema import (
    Action,
    Appeal,
    Content,
    Decision,
    Exposure,
    Outbox,
    Reviewer,
    ReviewerQueue,
    ReviewItem,
    Upload,
    VerdictRow,
)
from review.states import (
    ACTION_TRANSITIONS,
    AFTER_APPEAL_WINDOW,
    AUTOMATED_ACTIONS,
    CLAIMABLE,
    CONTENT_ACTIONS,
    IRREVERSIBLE_ACTIONS,
    ITEM_TRANSITIONS,
    OPEN_ITEM_STATUSES,
    REVERSAL,
    ActionKind,
    ActionStatus,
    ItemKind,
    ItemStatus,
    Transition,
    Verdict,
    sql_in,
)

log = logging.getLogger(__name__)
SYSTEM = "system:lookfirst"
BENIGN = frozenset({Verdict.BENIGN, Verdict.BENIGN_MEDICAL})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- the claim path's statements, built once (a claim is the hottest transaction) ----------
MAX_CLAIM_BATCH = 50
#: a capped queue without a window of its own counts exposure over one shift
DEFAULT_EXPOSURE_WINDOW = dt.timedelta(hours=8)
_ITEM = cast(Table, ReviewItem.__table__)
_VERDICT = cast(Table, VerdictRow.__table__)
_DECISION = cast(Table, Decision.__table__)
_UPLOAD = cast(Table, Upload.__table__)
_ACTION = cast(Table, Action.__table__)
_APPEAL = cast(Table, Appeal.__table__)
_EXPOSURE = cast(Table, Exposure.__table__)
_REVIEWER = cast(Table, Reviewer.__table__)
_MEMBER = cast(Table, ReviewerQueue.__table__)


#: the claimable statuses as literal SQL, the very predicate of the partial index
#: ix_review_item_claimable (a bound parameter would keep a generic plan off that index)
_CLAIMABLE_SQL = text(f"review_item.status IN {sql_in(set(CLAIMABLE))}")


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
            _CLAIMABLE_SQL,
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


_PICK = _pick_statement()
_PICK_ONE = _PICK.where(_ITEM.c.id == bindparam("item_id"))
_CLAIM = (
    update(_ITEM)
    .where(_ITEM.c.id.in_(bindparam("ids", expanding=True)),
           _ITEM.c.status.in_(sorted(ITEM_TRANSITIONS["claim"].sources)))
    .values(status=ITEM_TRANSITIONS["claim"].target, claimed_by=bindparam("b_reviewer"),
            lease_expires_at=bindparam("b_until"), updated_at=bindparam("b_now"))
    .returning(*_ITEM.c)
)
_EXPIRED = (
    select(_ITEM.c.id)
    .where(_ITEM.c.status == ItemStatus.CLAIMED, _ITEM.c.lease_expires_at <= bindparam("now"))
    .order_by(_ITEM.c.id)
    .limit(bindparam("lim", type_=Integer))
    .with_for_update(skip_locked=True)
)
_EXPOSURE_SEEN = (
    select(func.count()).select_from(_EXPOSURE)
    .where(_EXPOSURE.c.reviewer_id == bindparam("r"), _EXPOSURE.c.queue == bindparam("q"),
           _EXPOSURE.c.at > bindparam("since"))
)
_ENTITLED = (
    select(_REVIEWER.c.active, _REVIEWER.c.roles, _MEMBER.c.queue)
    .select_from(_REVIEWER.outerjoin(_MEMBER, _MEMBER.c.reviewer_id == _REVIEWER.c.id))
    .where(_REVIEWER.c.id == bindparam("r"))
)
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


# ---- configuration handed in by the pipeline (review knows no policy files) ------------------
@dataclass(frozen=True, slots=True)
class QueueRules:
    name: str
    sla: dt.timedelta
    role: str | None = None
    reviewers_required: int = 1
    exposure_cap: int | None = None
    exposure_window: dt.timedelta | None = None
    escalate_to: str | None = None


@dataclass(frozen=True)
class ReviewConfig:
    queues: Mapping[str, QueueRules]
    #: verdict + categories -> the actions a reviewer's verdict approves (the policy's mapping)
    actions_for_verdict: Callable[[str, Sequence[str]], Sequence[str]]
    appeals_queue: str = "appeals"
    escalation_queue: str = "senior"
    urgent_actions: frozenset[str] = frozenset({ActionKind.REPORT})
    lease: dt.timedelta = dt.timedelta(minutes=15)
    #: how far one point of priority brings an item forward in its queue's order
    priority_weight: dt.timedelta = dt.timedelta(minutes=10)
    appeal_window: dt.timedelta = dt.timedelta(days=180)
    notice_period: dt.timedelta = dt.timedelta(hours=72)
    #: how often the claim path itself returns expired leases (the worker sweeps too)
    lease_sweep_every: dt.timedelta = dt.timedelta(seconds=1)

    def rules(self, queue: str) -> QueueRules:
        try:
            return self.queues[queue]
        except KeyError:
            raise ReviewError(f"unknown queue {queue!r}") from None


# ---- inputs and views ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NewUpload:
    account_id: str
    external_id: str
    source: str
    context: Mapping[str, Any]
    sha256: str
    mime: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Routing:
    """What the policy concluded, as the review store records it."""

    outcome: str  # allow | hold | review
    queue: str | None
    severity: str
    priority: int
    reviewers_required: int
    proposed_actions: tuple[str, ...]
    qa_sample: bool
    scores: Mapping[str, float]
    reasons: Mapping[str, Any]
    model_version: str
    policy_version: str
    #: shadow models' scores for the same image (stored for comparison, never consulted)
    shadow_scores: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Recorded:
    decision_id: str
    upload_id: str
    outcome: str
    queue: str | None
    item_id: int | None
    created: bool  # False: this upload was already scored; the stored decision is returned


@dataclass(frozen=True)
class ItemView:
    id: int
    kind: str
    queue: str
    status: str
    severity: str
    priority: int
    reviewers_required: int
    verdicts_in: int
    account_id: str
    content_sha256: str
    decision_id: str
    outcome: str
    scores: Mapping[str, Any]
    reasons: Mapping[str, Any]
    context: Mapping[str, Any]
    due_at: dt.datetime
    created_at: dt.datetime
    claimed_by: str | None
    lease_expires_at: dt.datetime | None
    proposed_actions: list[str]
    #: other reviewers' verdicts; hidden while the item is open (no anchoring)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    appeal_statement: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("due_at", "created_at", "lease_expires_at"):
            d[k] = d[k].isoformat() if d[k] else None
        d["scores"], d["reasons"], d["context"] = dict(self.scores), dict(self.reasons), dict(
            self.context
        )
        return d


@dataclass(frozen=True)
class DecideResult:
    item_id: int
    status: str
    verdict_id: int
    actions: list[dict[str, Any]]
    escalated_to: int | None = None


def action_dict(a: Action) -> dict[str, Any]:
    return {
        "id": a.id,
        "decision_id": a.decision_id,
        "item_id": a.item_id,
        "account_id": a.account_id,
        "content_sha256": a.content_sha256,
        "kind": a.kind,
        "target": a.target,
        "irreversible": a.irreversible,
        "urgent": a.urgent,
        "status": a.status,
        "approvers": [x for x in (a.approver_1, a.approver_2) if x],
        "reverses_action_id": a.reverses_action_id,
        "not_before": a.not_before.isoformat() if a.not_before else None,
        "executed_at": a.executed_at.isoformat() if a.executed_at else None,
    }


class ReviewService:
    def __init__(self, config: ReviewConfig, *, clock: Callable[[], dt.datetime] = utcnow,
                 claims_in_server: bool = True) -> None:
        self.config = config
        self.clock = clock
        #: PostgreSQL claims run inside the server (`lookfirst_claim`); False keeps them in
        #: Python, statement by statement, as on SQLite (the tests compare the two)
        self.claims_in_server = claims_in_server
        self._last_sweep: dt.datetime | None = None
        names, rules = list(config.queues), list(config.queues.values())
        #: each queue's role, exposure cap and window, as the claim function takes them
        self._queue_table: tuple[list[str], list[str | None], list[int | None],
                                 list[dt.timedelta | None]] = (
            names, [r.role for r in rules],
            [r.exposure_cap for r in rules],
            [None if r.exposure_cap is None else (r.exposure_window or DEFAULT_EXPOSURE_WINDOW)
             for r in rules])

    # ---- audit + outbox, always inside the caller's transaction ---------------------------
    def _audit(
        self,
        s: Session,
        *,
        actor: str,
        event: str,
        subject_type: str,
        subject_id: str | int,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        audit.append(
            s,
            at=self.clock(),
            actor=actor,
            event=event,
            subject_type=subject_type,
            subject_id=subject_id,
            data=dict(data or {}),
        )

    @staticmethod
    def _audit_many(s: Session, events: Sequence[audit.NewEvent]) -> None:
        audit.append_many(s, events)

    def _outbox(self, s: Session, *, topic: str, key: str, payload: Mapping[str, Any]) -> None:
        now = self.clock()
        s.add(
            Outbox(
                topic=topic,
                idempotency_key=key,
                payload=dict(payload),
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )

    # ---- transitions -------------------------------------------------------------------------
    def _item_transition(
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

    def _action_transition(
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
        self._audit(s, actor=actor, event=event, subject_type=subject_type, subject_id=row_id,
                    data={"to": str(t.target), **dict(data(obj))})
        return obj

    # ---- reviewers -----------------------------------------------------------------------------
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
            self.config.rules(q)
        existing = s.get(Reviewer, reviewer_id)
        if existing is None:
            s.add(
                Reviewer(
                    id=reviewer_id,
                    display_name=display_name or reviewer_id,
                    roles=sorted(set(roles)),
                    active=True,
                    created_at=self.clock(),
                )
            )
        else:
            existing.roles = sorted(set(existing.roles) | set(roles))
            existing.active = True
        s.flush()
        have = set(
            s.execute(select(ReviewerQueue.queue).where(ReviewerQueue.reviewer_id == reviewer_id))
            .scalars()
            .all()
        )
        for q in sorted(set(queues) - have):
            s.add(ReviewerQueue(reviewer_id=reviewer_id, queue=q))
        self._audit(
            s,
            actor=actor,
            event="reviewer.granted",
            subject_type="reviewer",
            subject_id=reviewer_id,
            data={"queues": sorted(queues), "roles": sorted(roles)},
        )

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
            raise _unknown_reviewer(reviewer_id)
        roles = rows[0].roles
        out = []
        for r in rows:
            rules = self.config.queues.get(r.queue) if r.queue is not None else None
            if rules is not None and (rules.role is None or rules.role in roles):
                out.append(r.queue)
        return sorted(out)

    def _require_entitled(self, s: Session, reviewer_id: str, queue: str) -> None:
        if queue not in self.entitled_queues(s, reviewer_id):
            raise self._not_entitled(reviewer_id, queue)

    def _not_entitled(self, reviewer_id: str, queue: str) -> NotEntitled:
        rules = self.config.queues.get(queue)
        need = f" (needs role {rules.role!r})" if rules and rules.role else ""
        return NotEntitled(f"reviewer {reviewer_id!r} is not entitled to queue {queue!r}{need}")

    # ---- recording a decision ------------------------------------------------------------
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
        now = self.clock()
        if s.get(Content, upload.sha256) is None:
            s.add(
                Content(
                    sha256=upload.sha256,
                    mime=upload.mime,
                    width=upload.width,
                    height=upload.height,
                    size_bytes=upload.size_bytes,
                    created_at=now,
                )
            )
            s.flush()  # no ORM relationships: flush in foreign-key order ourselves
        upload_id, decision_id = str(uuid.uuid4()), str(uuid.uuid4())
        s.add(
            Upload(
                id=upload_id,
                content_sha256=upload.sha256,
                account_id=upload.account_id,
                external_id=upload.external_id,
                source=upload.source,
                context=dict(upload.context),
                received_at=now,
            )
        )
        s.flush()
        queue = routing.queue if (routing.outcome != "allow" or routing.qa_sample) else None
        s.add(
            Decision(
                id=decision_id,
                upload_id=upload_id,
                outcome=routing.outcome,
                model_version=routing.model_version,
                policy_version=routing.policy_version,
                scores=dict(routing.scores),
                reasons=dict(routing.reasons),
                queue=queue,
                shadow_scores=[dict(x) for x in routing.shadow_scores] or None,
                created_at=now,
            )
        )
        s.flush()
        self._audit(
            s,
            actor=SYSTEM,
            event="decision.recorded",
            subject_type="decision",
            subject_id=decision_id,
            data={
                "outcome": routing.outcome,
                "queue": queue,
                "model_version": routing.model_version,
                "policy_version": routing.policy_version,
                "scores": dict(routing.scores),
                "qa_sample": routing.qa_sample,
            },
        )
        item_id: int | None = None
        if routing.outcome in ("hold", "review") or routing.qa_sample:
            assert queue is not None
            kind = ItemKind.INITIAL if routing.outcome != "allow" else ItemKind.QA
            item_id = self._new_item(
                s,
                decision_id=decision_id,
                kind=kind,
                queue=queue,
                severity=routing.severity,
                priority=routing.priority,
                reviewers_required=routing.reviewers_required,
                account_id=upload.account_id,
                content_sha256=upload.sha256,
            )
            # the policy's suggestion: exists only as a proposal until a human verdict approves it
            if kind == ItemKind.INITIAL:
                for kind_ in routing.proposed_actions:
                    self._new_action(
                        s, decision_id=decision_id, item_id=item_id, kind=ActionKind(kind_),
                        account_id=upload.account_id, content_sha256=upload.sha256,
                    )
        if routing.outcome == "hold":
            # the one automated action: a reversible content hold, pending review
            hold = self._new_action(
                s, decision_id=decision_id, item_id=item_id, kind=ActionKind.HOLD_CONTENT,
                account_id=upload.account_id, content_sha256=upload.sha256,
                status=ActionStatus.APPROVED,
            )
            self._execute(s, hold, actor=SYSTEM)
        self._outbox(
            s,
            topic="decision",
            key=f"decision:{decision_id}",
            payload={"decision_id": decision_id, "upload_id": upload.external_id,
                     "account_id": upload.account_id, "outcome": routing.outcome,
                     "queue": queue, "item_id": item_id},
        )
        return Recorded(decision_id, upload_id, routing.outcome, queue, item_id, True)

    def _new_item(
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
        rules = self.config.rules(queue)
        now = self.clock()
        item = ReviewItem(
            decision_id=decision_id,
            kind=kind,
            queue=queue,
            severity=severity,
            priority=priority,
            status=ItemStatus.PENDING,
            reviewers_required=max(reviewers_required, rules.reviewers_required),
            account_id=account_id,
            content_sha256=content_sha256,
            parent_item_id=parent_item_id,
            due_at=now + rules.sla,
            rank_at=now + rules.sla - priority * self.config.priority_weight,
            created_at=now,
            updated_at=now,
        )
        s.add(item)
        s.flush()
        self._audit(
            s,
            actor=SYSTEM,
            event="item.created",
            subject_type="review_item",
            subject_id=item.id,
            data={"kind": str(kind), "queue": queue, "decision_id": decision_id,
                  "priority": priority, "reviewers_required": item.reviewers_required},
        )
        return item.id

    def _new_action(
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
        now = self.clock()
        a = Action(
            decision_id=decision_id,
            item_id=item_id,
            account_id=account_id,
            content_sha256=content_sha256,
            kind=kind,
            target="content" if kind in CONTENT_ACTIONS else "account",
            irreversible=kind in IRREVERSIBLE_ACTIONS,
            urgent=kind in self.config.urgent_actions,
            status=status,
            approver_1=approver[0] if approver else None,
            approver_1_verdict_id=approver[1] if approver else None,
            reverses_action_id=reverses,
            not_before=now + self.config.appeal_window if kind in AFTER_APPEAL_WINDOW else None,
            created_at=now,
            updated_at=now,
        )
        s.add(a)
        s.flush()
        self._audit(
            s,
            actor=actor,
            event="action.created",
            subject_type="action",
            subject_id=a.id,
            data={"kind": str(kind), "status": str(status), "decision_id": decision_id,
                  "reverses": reverses},
        )
        return a

    # ---- queue: list, show, claim, leases -------------------------------------------------
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
            q = q.where(ReviewItem.queue.in_(self.entitled_queues(s, viewer)))
        if queue is not None:
            q = q.where(ReviewItem.queue == queue)
        if statuses:
            q = q.where(ReviewItem.status.in_(list(statuses)))
        q = q.order_by(ReviewItem.rank_at, ReviewItem.id).limit(limit)
        return [self._view(s, it, viewer) for it in s.execute(q).scalars().all()]

    def show(self, s: Session, item_id: int, *, viewer: str | None) -> ItemView:
        item = s.get(ReviewItem, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if viewer is not None:
            self._require_entitled(s, viewer, item.queue)
        return self._view(s, item, viewer)

    def _view(self, s: Session, item: Any, viewer: str | None) -> ItemView:
        return self._views(s, [item], viewer)[0]

    def _views(self, s: Session, items: Sequence[Any], viewer: str | None) -> list[ItemView]:
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
        return _assemble_views(items, decisions, verdicts, proposed, appeals, viewer)

    def expire_leases(self, s: Session, *, limit: int = 100) -> list[int]:
        """Return items whose lease ran out to their queue, each with an audit event."""
        now = self.clock()
        expired: list[int] = list(s.execute(_EXPIRED, {"now": now, "lim": limit}).scalars())
        for item_id in expired:
            self._release(s, item_id, actor=SYSTEM, reason="lease_expired")
        return list(expired)

    def server_claims(self, dialect: str, reviewer_id: str) -> bool:
        """Whether this reviewer's claims run inside the database (`lookfirst_claim`)."""
        return self.claims_in_server and dialect == "postgresql" and _audit_safe(reviewer_id)

    def sweep_due(self, now: dt.datetime) -> bool:
        """Whether the claim path should return expired leases now (see `_sweep_leases`)."""
        last = self._last_sweep
        return last is None or now >= last + self.config.lease_sweep_every or now < last

    def sweep_leases(self, s: Session, *, now: dt.datetime, force: bool = False) -> int:
        """`_sweep_leases` for a caller that runs the sweep in its own transaction."""
        return self._sweep_leases(s, now, force=force)

    def _sweep_leases(self, s: Session, now: dt.datetime, *, force: bool = False) -> int:
        """`expire_leases` from the claim path: at most once per `lease_sweep_every` per
        service while there is work to hand out, and always before a claim says there is
        none (a lease is minutes long; `lookfirst worker` sweeps too).  Returns how many
        leases it returned."""
        if force or self.sweep_due(now):
            self._last_sweep = now
            return len(self.expire_leases(s))
        return 0

    def _release(self, s: Session, item_id: int, *, actor: str, reason: str) -> ReviewItem:
        n = s.execute(
            select(func.count()).select_from(VerdictRow).where(VerdictRow.item_id == item_id)
        ).scalar_one()
        name = "release_second" if n else "release_first"
        return self._item_transition(
            s, item_id, name, actor=actor,
            values={"claimed_by": None, "lease_expires_at": None}, data={"reason": reason},
        )

    def claim(
        self,
        s: Session,
        *,
        reviewer_id: str,
        queue: str | None = None,
        item_id: int | None = None,
    ) -> ItemView:
        """Lease the most urgent item the reviewer may take (see `claim_many`); with `item_id`,
        that item or `InvalidTransition`."""
        views = self.claim_many(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id)
        return views[0]

    def claim_many(
        self,
        s: Session,
        *,
        reviewer_id: str,
        queue: str | None = None,
        item_id: int | None = None,
        limit: int = 1,
    ) -> list[ItemView]:
        """Lease up to `limit` of the most urgent items the reviewer may take: the earliest
        `rank_at` (the SLA deadline brought forward by severity-derived priority), then the
        oldest.  Each item gets its own lease and its own audit event; the whole batch costs
        one transaction (a reviewer's tool prefetching the next items).

        PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on or take the
        same row, all of it in one round trip (`lookfirst_claim`, migration 0008).  SQLite: the
        transaction already holds the single write lock, and the same rules run here."""
        check_claim_limit(limit)
        now = self.clock()
        self._sweep_leases(s, now)
        views = self.lease(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                           limit=limit, now=now)
        if not views and self._sweep_leases(s, now, force=True):
            views = self.lease(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                               limit=limit, now=now)
        if not views:
            raise nothing_claimed(reviewer_id, item_id)
        return views

    def lease(self, s: Session, *, reviewer_id: str, queue: str | None, item_id: int | None,
              limit: int, now: dt.datetime) -> list[ItemView]:
        """One attempt at `claim_many` without its lease sweeps: the leased items' views, or
        [] when nothing is claimable (the claim desk sweeps in transactions of its own)."""
        if self.server_claims(s.get_bind().dialect.name, reviewer_id):
            return self._lease_in_server(s, reviewer_id, queue, item_id, limit, now)
        return self._lease_here(s, reviewer_id, queue, item_id, limit, now)

    def _exposure_cap_reached(self, reviewer_id: str, queue: str) -> ExposureCapReached:
        rules = self.config.rules(queue)
        return ExposureCapReached(
            f"reviewer {reviewer_id!r} has reviewed {rules.exposure_cap} items in severe "
            f"queue {queue!r} within {rules.exposure_window}; take a break or another queue"
        )

    def _lease_here(self, s: Session, reviewer_id: str, queue: str | None, item_id: int | None,
                    limit: int, now: dt.datetime) -> list[ItemView]:
        """The claim, statement by statement (SQLite, and PostgreSQL when told to)."""
        queues = self.entitled_queues(s, reviewer_id)
        if queue is not None:
            if queue not in queues:
                self._require_entitled(s, reviewer_id, queue)  # raises, with the reason
            queues = [queue]
        if not queues:
            raise _no_queues(reviewer_id)
        room: dict[str, int] = {}  # exposure left in each capped queue
        for q in queues:
            rules = self.config.rules(q)
            if rules.exposure_cap is None:
                continue
            window = rules.exposure_window or DEFAULT_EXPOSURE_WINDOW
            seen = s.execute(_EXPOSURE_SEEN, {"r": reviewer_id, "q": q,
                                              "since": now - window}).scalar_one()
            room[q] = rules.exposure_cap - seen
        open_queues = [q for q in queues if room.get(q, 1) > 0]
        if not open_queues:
            raise self._exposure_cap_reached(reviewer_id, queues[0])
        ids = self._pick(s, reviewer_id, open_queues, item_id, limit, room)
        if not ids:
            return []
        until = now + self.config.lease
        t = ITEM_TRANSITIONS["claim"]
        rows = list(s.execute(_CLAIM, {"ids": ids, "b_reviewer": reviewer_id, "b_until": until,
                                       "b_now": now}))
        if len(rows) != len(ids):  # the rows are locked by us: cannot happen, refuse if it does
            raise InvalidTransition(f"review items {ids} cannot '{t.name}' from their state")
        self._forget(s, ReviewItem, ids)
        rows.sort(key=lambda r: ids.index(r.id))
        exposures = [{"reviewer_id": reviewer_id, "queue": r.queue, "item_id": r.id, "at": now}
                     for r in rows if r.queue in room]
        if exposures:
            s.execute(insert(_EXPOSURE), exposures)
        views = self._views(s, rows, reviewer_id)
        # the audit events come last: the chain's head row stays locked for little more than
        # the commit
        self._audit_many(s, [
            audit.NewEvent(now, reviewer_id, f"item.{t.name}", "review_item", r.id,
                           {"to": str(t.target)})
            for r in rows
        ])
        return views

    def _lease_in_server(self, s: Session, reviewer_id: str, queue: str | None,
                         item_id: int | None, limit: int, now: dt.datetime) -> list[ItemView]:
        """The same claim as `_lease_here`, done by `lookfirst_claim` inside PostgreSQL in one
        round trip, in the caller's transaction; the policy's rules for each queue go in as
        arguments."""
        rows = s.execute(CLAIM_IN_SERVER, self.server_claim_params(
            reviewer_id=reviewer_id, queue=queue, item_id=item_id, limit=limit, now=now,
            chain=audit.held_chain(s))).all()
        views = self.server_claim_views(rows, reviewer_id=reviewer_id, queue=queue)
        if views:
            # the function appended to this chain's head, which the transaction now holds
            audit.hold_chain(s, rows[0][2])
            self._forget(s, ReviewItem, [v.id for v in views])
        return views

    def server_claim_params(self, *, reviewer_id: str, queue: str | None, item_id: int | None,
                            limit: int, now: dt.datetime, chain: int | None) -> dict[str, Any]:
        """`lookfirst_claim`'s arguments (see `CLAIM_IN_SERVER`)."""
        names, roles, caps, since = self._queue_table
        return {
            "reviewer": reviewer_id, "queue": queue, "item_id": item_id, "lim": limit,
            "now": _naive_utc(now), "until": _naive_utc(now + self.config.lease),
            "chain": chain, "cfg_queues": names, "cfg_roles": roles, "cfg_caps": caps,
            "cfg_since": [None if w is None else _naive_utc(now - w) for w in since],
        }

    def server_claim_views(self, rows: Sequence[Any], *, reviewer_id: str,
                           queue: str | None) -> list[ItemView]:
        """What the reviewer sees of the items `lookfirst_claim` leased (empty: nothing to
        claim), or the refusal it answered, as the Python path raises it."""
        # (ord, outcome_code, chain, queue, item): SQLAlchemy rows or the driver's tuples
        if rows and rows[0][1] != "ok":
            code = rows[0][1]
            if code == "unknown_reviewer":
                raise _unknown_reviewer(reviewer_id)
            if code == "not_entitled":
                assert queue is not None
                raise self._not_entitled(reviewer_id, queue)
            if code == "no_queues":
                raise _no_queues(reviewer_id)
            if code == "exposure_cap":
                raise self._exposure_cap_reached(reviewer_id, rows[0][3])
            raise ReviewError(f"claim refused: {code}")  # pragma: no cover - no other codes
        items, decisions = [], {}
        verdicts: dict[int, list[Any]] = {}
        proposed: dict[str, set[str]] = {}
        appeals: dict[int, str] = {}
        for r in rows:
            i = r[4]
            items.append(SimpleNamespace(
                id=i["id"], decision_id=i["decision_id"], kind=i["kind"], queue=i["queue"],
                severity=i["severity"], priority=i["priority"], status=i["status"],
                reviewers_required=i["reviewers_required"], account_id=i["account_id"],
                content_sha256=i["content_sha256"], parent_item_id=i["parent_item_id"],
                claimed_by=i["claimed_by"], lease_expires_at=_from_json(i["lease_expires_at"]),
                due_at=_from_json(i["due_at"]), created_at=_from_json(i["created_at"])))
            decisions[i["decision_id"]] = SimpleNamespace(
                outcome=i["outcome"], scores=i["scores"], reasons=i["reasons"],
                context=i["context"])
            for v in i["verdicts"] or ():
                verdicts.setdefault(v["item_id"], []).append(SimpleNamespace(
                    reviewer_id=v["reviewer_id"], verdict=v["verdict"],
                    categories=v["categories"], note=v["note"],
                    created_at=_from_json(v["created_at"])))
            proposed[i["decision_id"]] = set(i["proposed"] or ())
            if i["appeal_statement"] is not None:
                appeals[i["id"]] = i["appeal_statement"]
        return _assemble_views(items, decisions, verdicts, proposed, appeals, reviewer_id)

    def _pick(self, s: Session, reviewer_id: str, queues: Sequence[str], item_id: int | None,
              limit: int, room: dict[str, int]) -> list[int]:
        """Lock up to `limit` items this reviewer may claim, most urgent queue first; in capped
        queues no more than the exposure left (`room` is spent as items are taken)."""
        ids: list[int] = []
        for q in self._by_urgency(s, queues) if item_id is None else queues:
            want = limit - len(ids)
            if want <= 0:
                break
            if q in room:
                want = min(want, room[q])
                if want <= 0:
                    continue
            params = {"queue": q, "reviewer": reviewer_id, "lim": want}
            if item_id is None:
                got = [r.id for r in s.execute(_PICK, params)]
            else:
                got = [r.id for r in s.execute(_PICK_ONE, {**params, "item_id": item_id})]
            if q in room:
                room[q] -= len(got)
            ids.extend(got)
        return ids

    @staticmethod
    def _by_urgency(s: Session, queues: Sequence[str]) -> list[str]:
        """The queues that have claimable items, the one whose first item is due first first
        (one index probe per queue)."""
        if len(queues) == 1:
            return list(queues)
        heads = s.execute(select(*(
            select(func.min(_ITEM.c.rank_at)).where(_ITEM.c.queue == q, _CLAIMABLE_SQL)
            .scalar_subquery().label(f"q{i}")
            for i, q in enumerate(queues)
        ))).one()
        return [q for at, q in sorted((at, q) for at, q in zip(heads, queues, strict=True)
                                      if at is not None)]

    @staticmethod
    def _forget(s: Session, model: type[Any], ids: Sequence[int]) -> None:
        """Rows changed by a Core statement: expire any copy the session already holds."""
        wanted = set(ids)
        for obj in list(s.identity_map.values()):
            if isinstance(obj, model) and obj.id in wanted:
                s.expire(obj)

    def renew(self, s: Session, *, item_id: int, reviewer_id: str) -> dt.datetime:
        now = self.clock()
        until = now + self.config.lease
        row = s.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id, ReviewItem.status == ItemStatus.CLAIMED,
                   ReviewItem.claimed_by == reviewer_id, ReviewItem.lease_expires_at > now)
            .values(lease_expires_at=until, updated_at=now)
            .returning(ReviewItem.id)
            .execution_options(synchronize_session=False)
        ).first()
        if row is None:
            raise NotClaimant(f"review item {item_id} is not leased to {reviewer_id!r}")
        self._audit(s, actor=reviewer_id, event="item.renew", subject_type="review_item",
                    subject_id=item_id, data={"until": until.isoformat()})
        return until

    def release(self, s: Session, *, item_id: int, reviewer_id: str) -> None:
        item = s.get(ReviewItem, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if item.claimed_by != reviewer_id:
            raise NotClaimant(f"review item {item_id} is not leased to {reviewer_id!r}")
        self._release(s, item_id, actor=reviewer_id, reason="released")

    def record_reveal(self, s: Session, *, item_id: int, reviewer_id: str, reason: str) -> None:
        """Seeing the original (unblurred) image is an audited act of an entitled reviewer."""
        item = s.get(ReviewItem, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        self._require_entitled(s, reviewer_id, item.queue)
        self._audit(s, actor=reviewer_id, event="item.reveal_original",
                    subject_type="review_item", subject_id=item_id, data={"reason": reason})

    # ---- verdicts ------------------------------------------------------------------------
    def decide(
        self,
        s: Session,
        *,
        item_id: int,
        reviewer_id: str,
        verdict: str,
        categories: Sequence[str] = (),
        note: str = "",
    ) -> DecideResult:
        now = self.clock()
        item = s.execute(
            select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()
        ).scalar_one_or_none()
        if item is None:
            raise NotFound(f"no review item {item_id}")
        self._require_entitled(s, reviewer_id, item.queue)
        try:
            v = Verdict(verdict)
        except ValueError:
            raise ReviewError(
                f"unknown verdict {verdict!r}; one of {', '.join(Verdict)}"
            ) from None
        if v == Verdict.VIOLATING and not categories:
            raise ReviewError("a 'violating' verdict must name the violated categories")
        already = s.execute(
            select(VerdictRow.id).where(VerdictRow.item_id == item_id,
                                        VerdictRow.reviewer_id == reviewer_id)
        ).scalar()
        if already is not None:
            raise AlreadyDecided()
        if item.kind in (ItemKind.APPEAL, ItemKind.ESCALATION) and s.execute(
            select(VerdictRow.id)
            .join(ReviewItem, ReviewItem.id == VerdictRow.item_id)
            .where(ReviewItem.decision_id == item.decision_id, ReviewItem.id != item_id,
                   VerdictRow.reviewer_id == reviewer_id)
            .limit(1)
        ).scalar() is not None:
            # claim() keeps these from whoever decided the upload before; a lease taken before
            # its holder decided another item of the same upload must not slip through either
            raise AlreadyDecided(
                f"reviewer {reviewer_id!r} has decided this upload before; an appeal or an "
                "escalation needs someone who has not"
            )
        if (
            item.status != ItemStatus.CLAIMED
            or item.claimed_by != reviewer_id
            or item.lease_expires_at is None
            or item.lease_expires_at <= now
        ):
            raise NotClaimant(
                f"review item {item_id} is not leased to {reviewer_id!r}; claim it first"
            )
        proposed = self._proposals(item, v, categories)
        row = VerdictRow(
            item_id=item_id,
            reviewer_id=reviewer_id,
            verdict=v,
            categories=sorted(set(categories)),
            proposed_actions=[str(k) for k in proposed],
            note=note,
            created_at=now,
        )
        s.add(row)
        try:
            s.flush()
        except IntegrityError:  # pragma: no cover - the check above runs under the row lock
            raise AlreadyDecided() from None
        self._audit(
            s, actor=reviewer_id, event="verdict.recorded", subject_type="review_item",
            subject_id=item_id,
            data={"verdict_id": row.id, "verdict": str(v), "categories": row.categories,
                  "proposed_actions": row.proposed_actions},
        )
        verdicts = s.execute(
            select(VerdictRow).where(VerdictRow.item_id == item_id).order_by(VerdictRow.id)
        ).scalars().all()
        cleared = {"claimed_by": None, "lease_expires_at": None}

        if v == Verdict.NEED_MORE_CONTEXT:
            self._item_transition(s, item_id, "ask_context", actor=reviewer_id, values=cleared)
            self._outbox(
                s, topic="context.requested", key=f"context:{item_id}:{row.id}",
                payload={"decision_id": item.decision_id, "item_id": item_id,
                         "account_id": item.account_id},
            )
            return DecideResult(item_id, ItemStatus.AWAITING_CONTEXT, row.id, [])

        # a request for context is not a conclusion: it neither counts towards the verdicts
        # needed nor disagrees with the verdict given once the context is in
        verdicts = [vv for vv in verdicts if vv.verdict != Verdict.NEED_MORE_CONTEXT]
        needed = item.reviewers_required
        if any(k in IRREVERSIBLE_ACTIONS for vv in verdicts for k in vv.proposed_actions):
            needed = 2  # invariant 2: irreversible steps need two people
        if len(verdicts) < needed:
            self._item_transition(s, item_id, "await_second", actor=reviewer_id, values=cleared)
            actions = self._stage_proposals(s, item, proposed, row)
            return DecideResult(item_id, ItemStatus.AWAITING_SECOND, row.id,
                                [action_dict(a) for a in actions])
        if len(verdicts) >= 2:
            first, second = verdicts[-2], verdicts[-1]
            if not _agree(first, second):
                return self._escalate(s, item, row, first, second)
        self._item_transition(
            s, item_id, "decide", actor=reviewer_id,
            values={**cleared, "resolved_at": now, "resolution": str(v)},
        )
        actions = self._resolve(s, item, v, verdicts)
        return DecideResult(item_id, ItemStatus.DECIDED, row.id, [action_dict(a) for a in actions])

    def _proposals(
        self, item: ReviewItem, v: Verdict, categories: Sequence[str]
    ) -> tuple[ActionKind, ...]:
        if item.kind == ItemKind.QA:
            return ()  # quality control never leads to enforcement
        if item.kind in (ItemKind.APPEAL, ItemKind.CONTEXT):
            return ()  # these confirm or overturn; reversals are derived, not proposed
        kinds = [ActionKind(k) for k in self.config.actions_for_verdict(str(v), list(categories))]
        if ActionKind.TERMINATE in kinds and ActionKind.SUSPEND not in kinds:
            kinds.insert(kinds.index(ActionKind.TERMINATE), ActionKind.SUSPEND)  # suspend first
        return tuple(dict.fromkeys(kinds))

    def _stage_proposals(
        self, s: Session, item: ReviewItem, kinds: Sequence[ActionKind], verdict: VerdictRow
    ) -> list[Action]:
        """First of two verdicts: its actions exist as proposals carrying one approval."""
        out = []
        existing = {
            a.kind: a
            for a in s.execute(
                select(Action).where(Action.decision_id == item.decision_id,
                                     Action.status == ActionStatus.PROPOSED)
            ).scalars()
        }
        for k in kinds:
            a = existing.get(k) or self._new_action(
                s, decision_id=item.decision_id, item_id=item.id, kind=k,
                account_id=item.account_id, content_sha256=item.content_sha256,
                actor=verdict.reviewer_id,
            )
            a.approver_1, a.approver_1_verdict_id = verdict.reviewer_id, verdict.id
            a.item_id = item.id
            out.append(a)
        s.flush()
        return out

    def _escalate(
        self, s: Session, item: ReviewItem, row: VerdictRow, first: VerdictRow, second: VerdictRow
    ) -> DecideResult:
        now = self.clock()
        self._item_transition(
            s, item.id, "escalate", actor=row.reviewer_id,
            values={"claimed_by": None, "lease_expires_at": None, "resolved_at": now},
            data={"verdicts": [first.verdict, second.verdict]},
        )
        for a in s.execute(
            select(Action).where(Action.decision_id == item.decision_id,
                                 Action.status == ActionStatus.PROPOSED)
        ).scalars().all():
            a.approver_1 = a.approver_1_verdict_id = None
            s.flush()
            self._action_transition(s, a.id, "cancel", actor=SYSTEM,
                                    data={"reason": "reviewers disagreed; escalated"})
        senior = self.config.rules(item.queue).escalate_to or self.config.escalation_queue
        new_id = self._new_item(
            s, decision_id=item.decision_id, kind=ItemKind.ESCALATION, queue=senior,
            severity=item.severity, priority=item.priority + 50,
            reviewers_required=item.reviewers_required, account_id=item.account_id,
            content_sha256=item.content_sha256, parent_item_id=item.id,
        )
        return DecideResult(item.id, ItemStatus.ESCALATED, row.id, [], escalated_to=new_id)

    def _resolve(
        self, s: Session, item: ReviewItem, v: Verdict, verdicts: Sequence[VerdictRow]
    ) -> list[Action]:
        approvers = verdicts[-2:] if len(verdicts) >= 2 else verdicts[-1:]
        if item.kind == ItemKind.QA:
            if v in BENIGN:
                self._clear(s, item, approvers[-1])
            return []
        if item.kind in (ItemKind.APPEAL, ItemKind.CONTEXT):
            upheld = v in BENIGN
            appeal = s.execute(select(Appeal).where(Appeal.item_id == item.id)).scalar()
            if appeal is not None:
                appeal.status = "upheld" if upheld else "rejected"
                appeal.resolved_at = self.clock()
                self._audit(s, actor=approvers[-1].reviewer_id, event=f"appeal.{appeal.status}",
                            subject_type="appeal", subject_id=appeal.id,
                            data={"decision_id": item.decision_id})
            if upheld:
                self._clear(s, item, approvers[-1])
                return self._overturn(s, item, approvers[-1])
            # confirmed: actions waiting on this look may now proceed when due
            return []
        kinds = [ActionKind(k) for k in approvers[-1].proposed_actions]
        open_ = {
            a.kind: a
            for a in s.execute(
                select(Action).where(Action.decision_id == item.decision_id,
                                     Action.status == ActionStatus.PROPOSED)
            ).scalars()
        }
        out: list[Action] = []
        for k in kinds:
            a = open_.pop(k, None) or self._new_action(
                s, decision_id=item.decision_id, item_id=item.id, kind=k,
                account_id=item.account_id, content_sha256=item.content_sha256,
                actor=approvers[-1].reviewer_id,
            )
            a.item_id = item.id
            a.approver_1, a.approver_1_verdict_id = approvers[0].reviewer_id, approvers[0].id
            if len(approvers) == 2:
                a.approver_2, a.approver_2_verdict_id = approvers[1].reviewer_id, approvers[1].id
            s.flush()
            a = self._action_transition(
                s, a.id, "approve", actor=approvers[-1].reviewer_id,
                data={"approvers": [x.reviewer_id for x in approvers]},
            )
            out.append(self._schedule(s, a))
        for a in open_.values():  # suggestions the reviewers did not confirm
            self._action_transition(s, a.id, "cancel", actor=approvers[-1].reviewer_id,
                                    data={"reason": "not confirmed by the verdict"})
        if v in BENIGN:
            self._clear(s, item, approvers[-1])
            out += self._overturn(s, item, approvers[-1])
        return out

    def _clear(self, s: Session, item: ReviewItem, by: VerdictRow) -> None:
        """A person found this content benign: remember it, so it is not flagged again."""
        banks.add(s, bank="cleared_benign", sha256=item.content_sha256,
                  source=f"verdict:{by.id}", actor=by.reviewer_id, at=self.clock(),
                  note=f"item {item.id}: {by.verdict}")

    def _overturn(self, s: Session, item: ReviewItem, by: VerdictRow) -> list[Action]:
        """A person found no violation: cancel what has not run, reverse what has."""
        out: list[Action] = []
        for a in s.execute(
            select(Action).where(Action.decision_id == item.decision_id).order_by(Action.id)
        ).scalars().all():
            if a.status in (ActionStatus.PROPOSED, ActionStatus.APPROVED, ActionStatus.NOTIFIED):
                self._action_transition(s, a.id, "cancel", actor=by.reviewer_id,
                                        data={"reason": f"overturned by item {item.id}"})
            elif (
                a.status == ActionStatus.EXECUTED
                and a.reverses_action_id is None
                and ActionKind(a.kind) in REVERSAL
            ):
                r = self._new_action(
                    s, decision_id=a.decision_id, item_id=item.id,
                    kind=REVERSAL[ActionKind(a.kind)],
                    account_id=a.account_id, content_sha256=a.content_sha256,
                    reverses=a.id, approver=(by.reviewer_id, by.id), actor=by.reviewer_id,
                )
                r = self._action_transition(s, r.id, "approve", actor=by.reviewer_id)
                out.append(r)
        return out

    def _schedule(self, s: Session, a: Action) -> Action:
        """After approval: account actions other than urgent ones first notify the user, who
        may answer with their context before the action runs; erasure waits for the window."""
        now = self.clock()
        if a.target == "account" and not a.urgent and a.kind not in REVERSAL_TARGETS:
            deadline = now + self.config.notice_period
            if a.not_before is not None:
                deadline = max(deadline, a.not_before)
            a = self._action_transition(s, a.id, "notify", actor=SYSTEM,
                                        values={"not_before": deadline},
                                        data={"notice_until": deadline.isoformat()})
            self._outbox(
                s, topic="notice", key=f"notice:{a.id}",
                payload={"action_id": a.id, "kind": a.kind, "account_id": a.account_id,
                         "decision_id": a.decision_id, "reply_until": deadline.isoformat()},
            )
        return a

    # ---- execution -----------------------------------------------------------------------
    def execute(self, s: Session, *, action_id: int, actor: str) -> Action:
        a = s.execute(select(Action).where(Action.id == action_id).with_for_update()).scalar()
        if a is None:
            raise NotFound(f"no action {action_id}")
        if a.status == ActionStatus.PROPOSED:
            raise ActionNotApproved(
                f"action {action_id} ({a.kind}) is only proposed: no reviewer has approved it"
            )
        if a.status not in (ActionStatus.APPROVED, ActionStatus.NOTIFIED):
            raise InvalidTransition(f"action {action_id} is {a.status}; nothing to execute")
        now = self.clock()
        if a.not_before is not None and a.not_before > now:
            raise ActionNotDue(f"action {action_id} ({a.kind}) is not due before "
                               f"{a.not_before.isoformat()}")
        if self._under_review(s, a.decision_id):
            raise ActionNotDue(f"action {action_id}: the decision is under review again")
        return self._execute(s, a, actor=actor)

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

    def _execute(self, s: Session, a: Action, *, actor: str) -> Action:
        if a.kind not in AUTOMATED_ACTIONS and a.approver_1 is None:  # belt and braces; the
            raise ActionNotApproved()  # database refuses it too (ck_action_human_approved)
        a = self._action_transition(s, a.id, "execute", actor=actor,
                                    values={"executed_at": self.clock()})
        if a.reverses_action_id is not None:
            self._action_transition(s, a.reverses_action_id, "reverse", actor=actor,
                                    data={"by_action": a.id})
        self._outbox(
            s, topic="action", key=f"action:{a.id}",
            payload={**action_dict(a), "statement_url": f"/v1/decisions/{a.decision_id}"},
        )
        return a

    def execute_due(self, s: Session, *, actor: str = SYSTEM, limit: int = 100) -> list[Action]:
        """Execute every approved action that is due and whose decision no one is reviewing."""
        now = self.clock()
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
        return [self._execute(s, a, actor=actor) for a in due]

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

    # ---- the user's voice: appeals and context ----------------------------------------------
    def appeal(
        self, s: Session, *, decision_id: str, statement: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        now = self.clock()
        d = s.get(Decision, decision_id)
        if d is None:
            raise NotFound(f"no decision {decision_id}")
        if d.created_at + self.config.appeal_window < now:
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
        item_id = self._new_item(
            s, decision_id=decision_id, kind=ItemKind.APPEAL, queue=self.config.appeals_queue,
            severity="appeal", priority=60, reviewers_required=1, account_id=upload.account_id,
            content_sha256=upload.content_sha256,
        )
        ap = Appeal(decision_id=decision_id, item_id=item_id, statement=statement,
                    context=dict(context or {}), status="open", created_at=now)
        s.add(ap)
        s.flush()
        self._audit(s, actor=f"account:{upload.account_id}", event="appeal.filed",
                    subject_type="appeal", subject_id=ap.id,
                    data={"decision_id": decision_id, "item_id": item_id})
        return ap.id

    def provide_context(
        self, s: Session, *, decision_id: str, statement: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """The user's reply to a notice or a request for context re-enters review before any
        action runs.  Returns the review item that will look at it."""
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
            self._item_transition(s, waiting, "context_received", actor=actor, data=data)
            return waiting
        pending = s.execute(
            select(exists().where(Action.decision_id == decision_id,
                                  Action.status == ActionStatus.NOTIFIED))
        ).scalar_one()
        if not pending:
            raise AppealNotAllowed("no notice is waiting for a reply; file an appeal instead")
        item_id = self._new_item(
            s, decision_id=decision_id, kind=ItemKind.CONTEXT, queue=self.config.appeals_queue,
            severity="context", priority=80, reviewers_required=1, account_id=upload.account_id,
            content_sha256=upload.content_sha256,
        )
        s.add(Appeal(decision_id=decision_id, item_id=item_id, statement=statement,
                     context=dict(context or {}), status="open", created_at=self.clock()))
        self._audit(s, actor=actor, event="context.received", subject_type="review_item",
                    subject_id=item_id, data=data)
        return item_id

    # ---- reading -------------------------------------------------------------------------
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
                     "note": v.note, "at": v.created_at.isoformat()}
                    for v in vs
                ] if closed else [],
            })
        appeals = [
            {"id": a.id, "status": a.status, "statement": a.statement,
             "filed_at": a.created_at.isoformat()}
            for a in s.execute(select(Appeal).where(Appeal.decision_id == decision_id)).scalars()
        ]
        window_ends = d.created_at + self.config.appeal_window
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
            "reviews": reviews,
            "actions": self.list_actions(s, decision_id=decision_id),
            "appeals": appeals,
            "how_to_appeal": {
                "until": window_ends.isoformat(),
                "how": f"POST /v1/appeals with decision_id {d.id} and your own context; "
                       "a reviewer who did not decide it before will look again.",
            },
        }

    def stats(self, s: Session) -> list[dict[str, Any]]:
        now = self.clock()
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
        for q in sorted(set(self.config.queues) | set(by_queue)):
            r = by_queue.get(q)
            oldest = r[2] if r else None
            out.append({
                "queue": q,
                "depth": int(r[1]) if r else 0,
                "claimed": int(r[4] or 0) if r else 0,
                "oldest_age_s": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
                "breaches": int(r[3] or 0) if r else 0,
                "sla_s": (
                    self.config.queues[q].sla.total_seconds() if q in self.config.queues else None
                ),
            })
        return out

    # ---- bulk review: one act over the copies of an image or one account's burst ------------
    #: the kinds a bulk act may decide; appeals, escalations and context replies each carry a
    #: person's own statement or a disagreement, and get a look of their own
    BULK_KINDS = frozenset({ItemKind.INITIAL, ItemKind.QA})
    BULK_GROUPS = frozenset({"sha256", "account_burst"})

    def decide_bulk(
        self,
        s: Session,
        *,
        item_id: int,
        reviewer_id: str,
        verdict: str,
        categories: Sequence[str] = (),
        note: str = "",
        group: str = "sha256",
        burst_window: dt.timedelta = dt.timedelta(hours=1),
        limit: int = 200,
    ) -> list[DecideResult]:
        """Decide `item_id` (whose lease the reviewer holds) and, in the same transaction,
        every other open item the reviewer could claim that shows the same image
        (group="sha256") or comes from the same account within `burst_window` of it
        (group="account_burst"), with the same verdict.

        Each item goes through claim() and decide() as if done one by one: entitlement,
        exposure caps, the two-person rule (an item that needs two people gets this
        reviewer's one verdict and waits for a second person), an audit event per transition.
        One `bulk.decided` event lists what was decided and what was skipped (held by someone
        else, over the exposure cap, already carrying this reviewer's verdict).  Returns the
        anchor's result first, then the others by item id; at most `limit` items in all."""
        if group not in self.BULK_GROUPS:
            raise ReviewError(f"unknown bulk group {group!r}; one of "
                              f"{', '.join(sorted(self.BULK_GROUPS))}")
        try:
            v = Verdict(verdict)
        except ValueError:
            raise ReviewError(
                f"unknown verdict {verdict!r}; one of {', '.join(Verdict)}"
            ) from None
        if v == Verdict.NEED_MORE_CONTEXT:
            raise ReviewError("a request for the user's context is made item by item, not in bulk")
        if burst_window <= dt.timedelta(0):
            raise ReviewError("the burst window must be positive")
        if not 1 <= limit <= 1000:
            raise ReviewError("a bulk act decides between 1 and 1000 items")
        anchor = s.execute(
            select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()
        ).scalar_one_or_none()
        if anchor is None:
            raise NotFound(f"no review item {item_id}")
        entitled = self.entitled_queues(s, reviewer_id)
        if anchor.queue not in entitled:
            self._require_entitled(s, reviewer_id, anchor.queue)  # raises with the reason
        if anchor.kind not in self.BULK_KINDS:
            raise ReviewError(f"review item {item_id} is a {anchor.kind} item; appeals, "
                              "escalations and context replies are decided one by one")
        now = self.clock()
        if (anchor.status != ItemStatus.CLAIMED or anchor.claimed_by != reviewer_id
                or anchor.lease_expires_at is None or anchor.lease_expires_at <= now):
            raise NotClaimant(
                f"review item {item_id} is not leased to {reviewer_id!r}; claim it first"
            )
        if group == "sha256":
            same = [ReviewItem.content_sha256 == anchor.content_sha256]
            key = anchor.content_sha256
        else:
            same = [ReviewItem.account_id == anchor.account_id,
                    ReviewItem.created_at >= anchor.created_at - burst_window,
                    ReviewItem.created_at <= anchor.created_at + burst_window]
            key = anchor.account_id
        # the anchor first: an invalid verdict or category fails before anything else moves
        results = [self.decide(s, item_id=item_id, reviewer_id=reviewer_id, verdict=verdict,
                               categories=categories, note=note)]
        candidates = s.execute(
            select(ReviewItem.id, ReviewItem.status)
            .where(
                ReviewItem.id != item_id,
                ReviewItem.kind.in_(self.BULK_KINDS),
                ReviewItem.queue.in_(entitled),
                or_(ReviewItem.status.in_(CLAIMABLE),
                    (ReviewItem.status == ItemStatus.CLAIMED)
                    & (ReviewItem.claimed_by == reviewer_id)
                    & (ReviewItem.lease_expires_at > now)),
                *same,
            )
            .order_by(ReviewItem.id)
            .limit(limit - 1)
        ).all()
        skipped: list[int] = []
        for other_id, status in candidates:
            if status != ItemStatus.CLAIMED:
                try:  # the claim's own rules: SKIP LOCKED, two people, exposure caps
                    self.claim(s, reviewer_id=reviewer_id, item_id=other_id)
                except (InvalidTransition, ExposureCapReached):
                    skipped.append(other_id)
                    continue
            results.append(self.decide(s, item_id=other_id, reviewer_id=reviewer_id,
                                       verdict=verdict, categories=categories, note=note))
        self._audit(
            s, actor=reviewer_id, event="bulk.decided", subject_type="review_item",
            subject_id=item_id,
            data={"group": group, "key": key, "verdict": str(v),
                  "categories": sorted(set(categories)),
                  "window_s": burst_window.total_seconds() if group == "account_burst" else None,
                  "items": [r.item_id for r in results], "skipped": skipped},
        )
        return results


#: reversals are restorative: they run at once, with no notice period
REVERSAL_TARGETS = frozenset(REVERSAL.values())


def check_claim_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_CLAIM_BATCH:
        raise ReviewError(f"a claim takes 1 to {MAX_CLAIM_BATCH} items, not {limit}")


def _unknown_reviewer(reviewer_id: str) -> UnknownReviewer:
    return UnknownReviewer(f"reviewer {reviewer_id!r} is not registered or not active")


def _no_queues(reviewer_id: str) -> NotEntitled:
    return NotEntitled(f"reviewer {reviewer_id!r} has no queues")


def nothing_claimed(reviewer_id: str, item_id: int | None) -> ReviewError:
    """The refusal for a claim that found nothing: a named item, or the whole queue."""
    if item_id is not None:
        return InvalidTransition(f"review item {item_id} cannot be claimed by {reviewer_id!r}")
    return NothingToClaim()


def _agree(a: VerdictRow, b: VerdictRow) -> bool:
    """Two verdicts agree when they reach the same conclusion and approve the same actions."""
    return a.verdict == b.verdict and set(a.proposed_actions) == set(b.proposed_actions)


def _assemble_views(
    items: Sequence[Any],
    decisions: Mapping[str, Any],
    verdicts: Mapping[int, Sequence[Any]],
    proposed: Mapping[str, set[str]],
    appeals: Mapping[int, str],
    viewer: str | None,
) -> list[ItemView]:
    """The views themselves, from what was read (by `_views`, or by the claim function):
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
            id=it.id,
            kind=it.kind,
            queue=it.queue,
            status=it.status,
            severity=it.severity,
            priority=it.priority,
            reviewers_required=it.reviewers_required,
            verdicts_in=len(own),
            account_id=it.account_id,
            content_sha256=it.content_sha256,
            decision_id=it.decision_id,
            outcome=d.outcome,
            scores=d.scores,
            reasons=d.reasons,
            context=d.context,
            due_at=it.due_at,
            created_at=it.created_at,
            claimed_by=it.claimed_by,
            lease_expires_at=it.lease_expires_at,
            proposed_actions=sorted(proposed.get(it.decision_id, ())),
            verdicts=shown,
            appeal_statement=appeals.get(it.id),
        ))
    return out


# ---- claims inside PostgreSQL (migration 0008's lookfirst_claim) ------------------------------
#: one claim in one statement: `lookfirst_claim(...)`; in autocommit it is its own transaction
CLAIM_IN_SERVER = text(
    "SELECT * FROM lookfirst_claim(CAST(:reviewer AS text), CAST(:queue AS text), "
    "CAST(:item_id AS integer), CAST(:lim AS integer), CAST(:now AS timestamp), "
    "CAST(:until AS timestamp), CAST(:chain AS integer), CAST(:cfg_queues AS text[]), "
    "CAST(:cfg_roles AS text[]), CAST(:cfg_caps AS integer[]), CAST(:cfg_since AS timestamp[]))"
)


def _naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None)


def _from_json(t: str | None) -> dt.datetime | None:
    """A timestamp as PostgreSQL's JSON writes it (ISO 8601, UTC, no offset)."""
    return None if t is None else dt.datetime.fromisoformat(t).replace(tzinfo=dt.UTC)


def _audit_safe(actor: str) -> bool:
    """The claim function writes the audit body's JSON itself; PostgreSQL's to_json escapes
    printable ASCII exactly as Python's json.dumps(ensure_ascii=True) does, and nothing else
    is guaranteed to match, so any other reviewer id takes the Python path."""
    return all(" " <= c <= "~" for c in actor)
