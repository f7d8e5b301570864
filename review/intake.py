"""Intake: one upload and the policy's decision on it, recorded exactly once, routed to its
queue with the policy's proposals, and the one automated action (a reversible content hold).

`record` takes one upload; `record_many` a batch of them in the caller's transaction with the
same rows and audit events, in a few statements per batch instead of a dozen per upload."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from review import audit, banks
from review._core import SYSTEM, Core, action_created, item_created
from review.actions import Actions
from review.errors import InvalidTransition
from review.schema import Action, Content, Decision, Outbox, ReviewItem, Upload
from review.states import ACTION_TRANSITIONS, ActionKind, ActionStatus, ItemKind
from review.values import NewUpload, Recorded, Routing, action_dict

#: (account id, the platform's upload id): what names an upload
UploadKey = tuple[str, str]
# keys per IN (...) lookup: far below every backend's limit on bound parameters
_LOOKUP_CHUNK = 400
_T = {name: cast(Table, model.__table__) for name, model in (
    ("content", Content), ("upload", Upload), ("decision", Decision), ("item", ReviewItem),
    ("action", Action), ("outbox", Outbox))}


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

    def find_uploads(self, s: Session, keys: Iterable[UploadKey]) -> dict[UploadKey, Recorded]:
        """`find_upload` for many uploads at once: the decided ones among `keys`."""
        wanted = list(dict.fromkeys(keys))
        found: dict[UploadKey, Recorded] = {}
        for i in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[i : i + _LOOKUP_CHUNK]
            rows = s.execute(
                select(Upload.account_id, Upload.external_id, Upload.id, Decision.id,
                       Decision.outcome, Decision.queue)
                .join(Decision, Decision.upload_id == Upload.id)
                .where(tuple_(Upload.account_id, Upload.external_id).in_(chunk))
            ).all()
            items: dict[str, int] = {d: i for d, i in s.execute(
                select(ReviewItem.decision_id, func.min(ReviewItem.id))
                .where(ReviewItem.decision_id.in_([r[3] for r in rows]))
                .group_by(ReviewItem.decision_id)
            ).all()} if rows else {}
            for account, external, upload_id, decision_id, outcome, queue in rows:
                found[(account, external)] = Recorded(decision_id, upload_id, outcome, queue,
                                                      items.get(decision_id), False)
        return found

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
                          height=upload.height, size_bytes=upload.size_bytes, created_at=now,
                          pdq=upload.pdq, pdq_quality=upload.pdq_quality))
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
        self._bank_matches(s, decision_id, upload, routing, now)
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

    def record_many(self, s: Session, entries: Sequence[tuple[NewUpload, Routing]]
                    ) -> list[Recorded]:
        """`record` for a batch, in the caller's transaction: the same rows, the same audit
        events in the same order (appended at once), the same outbox messages, one result per
        entry in order.  An upload already decided, or named twice in the batch, is answered
        with its stored (or first) decision; a race with another writer still ends in the
        unique constraints (IntegrityError: the caller's retry finds the winner's decision)."""
        if not entries:
            return []
        core = self.core
        found = self.find_uploads(s, ((u.account_id, u.external_id) for u, _ in entries))
        now = core.clock()
        plans: dict[UploadKey, _Plan] = {}
        answers: list[Recorded | tuple[_Plan, bool]] = []
        for upload, routing in entries:
            key = (upload.account_id, upload.external_id)
            if key in found:
                answers.append(found[key])
            elif key in plans:
                answers.append((plans[key], False))  # named twice: the first one's decision
            else:
                plans[key] = _Plan(upload, routing, str(uuid.uuid4()), str(uuid.uuid4()))
                answers.append((plans[key], True))
        if plans:
            self._insert(s, list(plans.values()), now)
        return [a if isinstance(a, Recorded) else a[0].recorded(created=a[1]) for a in answers]

    def _insert(self, s: Session, plans: Sequence[_Plan], now: dt.datetime) -> None:
        core = self.core
        self._insert_content(s, [p.upload for p in plans], now)
        s.execute(insert(_T["upload"]), [
            {"id": p.upload_id, "content_sha256": p.upload.sha256,
             "account_id": p.upload.account_id, "external_id": p.upload.external_id,
             "source": p.upload.source, "context": dict(p.upload.context), "received_at": now}
            for p in plans])
        s.execute(insert(_T["decision"]), [
            {"id": p.decision_id, "upload_id": p.upload_id, "outcome": p.routing.outcome,
             "model_version": p.routing.model_version,
             "policy_version": p.routing.policy_version, "scores": dict(p.routing.scores),
             "reasons": dict(p.routing.reasons), "queue": p.queue,
             "shadow_scores": [dict(x) for x in p.routing.shadow_scores] or None,
             "created_at": now}
            for p in plans])
        for p in plans:
            self._bank_matches(s, p.decision_id, p.upload, p.routing, now)
        # review items, then their actions: ids come back in the order the rows went in
        items: list[tuple[_Plan, dict[str, Any]]] = [
            (p, core.item_values(
                decision_id=p.decision_id, kind=p.item_kind, queue=p.queue,
                severity=p.routing.severity, priority=p.routing.priority,
                reviewers_required=p.routing.reviewers_required,
                account_id=p.upload.account_id, content_sha256=p.upload.sha256, now=now))
            for p in plans if p.item_kind is not None and p.queue is not None]
        for (p, values), item_id in zip(
                items, _returning_ids(s, "item", [v for _, v in items]), strict=True):
            p.item = (item_id, values)
        actions: list[tuple[_Plan, dict[str, Any]]] = []
        for p in plans:
            if p.item_kind == ItemKind.INITIAL:
                actions += [(p, core.action_values(
                    decision_id=p.decision_id, item_id=p.item_id, kind=ActionKind(kind),
                    account_id=p.upload.account_id, content_sha256=p.upload.sha256, now=now))
                    for kind in p.routing.proposed_actions]
            if p.routing.outcome == "hold":
                actions.append((p, core.action_values(
                    decision_id=p.decision_id, item_id=p.item_id, kind=ActionKind.HOLD_CONTENT,
                    account_id=p.upload.account_id, content_sha256=p.upload.sha256, now=now,
                    status=ActionStatus.APPROVED)))
        for (p, values), action_id in zip(
                actions, _returning_ids(s, "action", [v for _, v in actions]), strict=True):
            p.actions.append((action_id, values))
        holds = self._execute_holds(s, [p.hold_id for p in plans if p.hold_id is not None], now)
        events: list[audit.NewEvent] = []
        messages: list[dict[str, Any]] = []
        for p in plans:
            events += p.events(now, holds)
            if p.hold_id is not None:
                messages.append(_message("action", f"action:{p.hold_id}", {
                    **holds[p.hold_id], "statement_url": f"/v1/decisions/{p.decision_id}"}, now))
            messages.append(_message("decision", f"decision:{p.decision_id}", {
                "decision_id": p.decision_id, "upload_id": p.upload.external_id,
                "account_id": p.upload.account_id, "outcome": p.routing.outcome,
                "queue": p.queue, "item_id": p.item_id}, now))
        s.execute(insert(_T["outbox"]), messages)
        audit.append_many(s, events)

    def _bank_matches(self, s: Session, decision_id: str, upload: NewUpload, routing: Routing,
                      now: dt.datetime) -> None:
        """The bank entry that routed this upload, recorded for flood protection and for a
        reviewer to confirm or mark false."""
        match = routing.reasons.get("bank")
        if not isinstance(match, dict) or match.get("entry_id") is None:
            return
        cfg = self.core.config
        banks.record_matches(s, decision_id=decision_id, account_id=upload.account_id,
                             matches=[match], at=now, flood_limit=cfg.bank_flood_limit,
                             flood_window=cfg.bank_flood_window)

    def _insert_content(self, s: Session, uploads: Sequence[NewUpload], now: dt.datetime
                        ) -> None:
        new: dict[str, NewUpload] = {}
        for u in uploads:
            new.setdefault(u.sha256, u)
        shas = list(new)
        for i in range(0, len(shas), _LOOKUP_CHUNK):
            for sha in s.execute(select(Content.sha256).where(
                    Content.sha256.in_(shas[i : i + _LOOKUP_CHUNK]))).scalars():
                new.pop(sha, None)
        if not new:
            return
        # a content row is the same whoever writes it first: another batch racing on the same
        # image is no conflict (uploads and decisions are where exactly-once is decided)
        dialect = s.get_bind().dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(_T["content"])
        s.execute(ins.on_conflict_do_nothing(index_elements=["sha256"]), [
            {"sha256": u.sha256, "mime": u.mime, "width": u.width, "height": u.height,
             "size_bytes": u.size_bytes, "created_at": now, "pdq": u.pdq,
             "pdq_quality": u.pdq_quality} for u in new.values()])

    def _execute_holds(self, s: Session, ids: list[int], now: dt.datetime
                       ) -> dict[int, dict[str, Any]]:
        """The automated content holds of the batch, executed by one transition (the same
        `UPDATE ... WHERE status IN (allowed)` as one by one); their outbox payloads."""
        if not ids:
            return {}
        t = ACTION_TRANSITIONS["execute"]
        done = s.execute(
            update(Action).where(Action.id.in_(ids), Action.status.in_(t.sources))
            .values(status=t.target, updated_at=now, executed_at=now)
            .returning(Action.id).execution_options(synchronize_session=False)
        ).scalars().all()
        if len(done) != len(ids):
            raise InvalidTransition("a content hold of this batch cannot 'execute'")
        rows = s.execute(select(Action).where(Action.id.in_(ids))
                         .execution_options(populate_existing=True)).scalars().all()
        return {a.id: action_dict(a) for a in rows}


class _Plan:
    """One upload of a batch on its way in: its ids as they are assigned, and its events."""

    def __init__(self, upload: NewUpload, routing: Routing, upload_id: str,
                 decision_id: str) -> None:
        self.upload = upload
        self.routing = routing
        self.upload_id = upload_id
        self.decision_id = decision_id
        self.queue = routing.queue if (routing.outcome != "allow" or routing.qa_sample) else None
        self.item_kind: ItemKind | None = None
        if routing.outcome in ("hold", "review") or routing.qa_sample:
            self.item_kind = ItemKind.INITIAL if routing.outcome != "allow" else ItemKind.QA
        #: (id, row) of its review item, once inserted
        self.item: tuple[int, dict[str, Any]] | None = None
        self.actions: list[tuple[int, dict[str, Any]]] = []

    @property
    def item_id(self) -> int | None:
        return self.item[0] if self.item is not None else None

    @property
    def hold_id(self) -> int | None:
        """The automated content hold (approved at birth; a proposed hold waits for people)."""
        return next((i for i, v in self.actions if v["kind"] == ActionKind.HOLD_CONTENT
                     and v["status"] == ActionStatus.APPROVED), None)

    def recorded(self, *, created: bool) -> Recorded:
        return Recorded(self.decision_id, self.upload_id, self.routing.outcome, self.queue,
                        self.item_id, created)

    def events(self, now: dt.datetime, holds: dict[int, dict[str, Any]]) -> list[audit.NewEvent]:
        """`record`'s audit events for this upload, in its order."""
        r = self.routing
        out = [audit.NewEvent(now, SYSTEM, "decision.recorded", "decision", self.decision_id, {
            "outcome": r.outcome, "queue": self.queue, "model_version": r.model_version,
            "policy_version": r.policy_version, "scores": dict(r.scores),
            "qa_sample": r.qa_sample})]
        if self.item is not None:
            out.append(audit.NewEvent(now, SYSTEM, "item.created", "review_item", self.item[0],
                                      item_created(self.item[1])))
        for action_id, values in self.actions:
            out.append(audit.NewEvent(now, SYSTEM, "action.created", "action", action_id,
                                      action_created(values)))
            if action_id in holds:
                out.append(audit.NewEvent(now, SYSTEM, "action.execute", "action", action_id, {
                    "to": str(ACTION_TRANSITIONS["execute"].target),
                    "kind": holds[action_id]["kind"]}))
        return out


def _returning_ids(s: Session, table: str, rows: list[dict[str, Any]]) -> list[int]:
    """Insert `rows`; their new ids, in the order of `rows`."""
    if not rows:
        return []
    result = s.execute(insert(_T[table]).returning(_T[table].c.id, sort_by_parameter_order=True),
                       rows)
    return [int(row[0]) for row in result.all()]


def _message(topic: str, key: str, payload: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """An outbox row, as `outbox.enqueue` writes it."""
    return {"topic": topic, "idempotency_key": key, "payload": payload, "status": "pending",
            "attempts": 0, "next_attempt_at": now, "created_at": now}
