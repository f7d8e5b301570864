"""Verdicts: the checks a verdict must pass, the two-person rule, escalation when two people
disagree, and the resolution that approves, cancels or reverses actions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from review import banks
from review._core import SYSTEM, Core, credential_for
from review.actions import Actions
from review.errors import (
    AlreadyDecided,
    CategoriesRequired,
    NotClaimant,
    NotFound,
    SameCredential,
    UnknownVerdict,
)
from review.reviewers import Reviewers
from review.schema import Action, Appeal, ReviewItem, VerdictRow
from review.states import (
    IRREVERSIBLE_ACTIONS,
    ActionKind,
    ActionStatus,
    ItemKind,
    ItemStatus,
    Verdict,
)
from review.values import DecideResult, action_dict

BENIGN = frozenset({Verdict.BENIGN, Verdict.BENIGN_MEDICAL})


def parse_verdict(verdict: str, categories: Sequence[str]) -> Verdict:
    """The verdict a reviewer gave, as one of ours; 'violating' must name its categories."""
    try:
        v = Verdict(verdict)
    except ValueError:
        raise UnknownVerdict(f"unknown verdict {verdict!r}; one of {', '.join(Verdict)}"
                             ) from None
    if v == Verdict.VIOLATING and not categories:
        raise CategoriesRequired("a 'violating' verdict must name the violated categories "
                                 "(CLI: --category, repeatable)")
    return v


def _agree(a: VerdictRow, b: VerdictRow) -> bool:
    """Two verdicts agree when they reach the same conclusion and approve the same actions."""
    return a.verdict == b.verdict and set(a.proposed_actions) == set(b.proposed_actions)


class Verdicts:
    def __init__(self, core: Core, reviewers: Reviewers, actions: Actions) -> None:
        self.core = core
        self.reviewers = reviewers
        self.actions = actions

    def check(self, s: Session, item: ReviewItem, *, reviewer_id: str, verdict: str,
              categories: Sequence[str], now: dt.datetime,
              credential: str | None = None) -> Verdict:
        """Every check a verdict on `item` must pass before anything is written, in this
        order: the reviewer is entitled to the queue, the verdict and its categories are
        valid, this reviewer has not decided the item (nor, for an appeal or an escalation,
        the upload) before, no verdict on the item came through the same credential, and the
        reviewer holds the item's lease.  `decide` and `decide_bulk` both use it."""
        self.reviewers.require_entitled(s, reviewer_id, item.queue)
        v = parse_verdict(verdict, categories)
        already = s.execute(
            select(VerdictRow.id).where(VerdictRow.item_id == item.id,
                                        VerdictRow.reviewer_id == reviewer_id)
        ).scalar()
        if already is not None:
            raise AlreadyDecided()
        door = credential_for(reviewer_id, credential)
        if s.execute(
            select(VerdictRow.id).where(VerdictRow.item_id == item.id,
                                        VerdictRow.credential == door)
        ).scalar() is not None:
            # the database holds it too (uq_verdict_item_credential)
            raise SameCredential()
        if item.kind in (ItemKind.APPEAL, ItemKind.ESCALATION) and s.execute(
            select(VerdictRow.id)
            .join(ReviewItem, ReviewItem.id == VerdictRow.item_id)
            .where(ReviewItem.decision_id == item.decision_id, ReviewItem.id != item.id,
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
                f"review item {item.id} is not leased to {reviewer_id!r}; claim it first"
            )
        return v

    def locked_item(self, s: Session, item_id: int) -> ReviewItem:
        """The item, locked for the rest of the transaction."""
        item = s.execute(
            select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()
        ).scalar_one_or_none()
        if item is None:
            raise NotFound(f"no review item {item_id}")
        return item

    def decide(
        self,
        s: Session,
        *,
        item_id: int,
        reviewer_id: str,
        verdict: str,
        categories: Sequence[str] = (),
        note: str = "",
        credential: str | None = None,
        delegate: bool = False,
    ) -> DecideResult:
        """Record `reviewer_id`'s verdict, given through `credential` (see `credential_for`),
        as a delegate acting for the reviewer when `delegate`."""
        core = self.core
        now = core.clock()
        item = self.locked_item(s, item_id)
        v = self.check(s, item, reviewer_id=reviewer_id, verdict=verdict,
                       categories=categories, now=now, credential=credential)
        proposed = self._proposals(item, v, categories)
        row = VerdictRow(
            item_id=item_id,
            reviewer_id=reviewer_id,
            verdict=v,
            categories=sorted(set(categories)),
            proposed_actions=[str(k) for k in proposed],
            note=note,
            created_at=now,
            credential=credential_for(reviewer_id, credential),
            via_delegate=delegate,
        )
        s.add(row)
        try:
            s.flush()
        except IntegrityError:  # pragma: no cover - the check above runs under the row lock
            raise AlreadyDecided() from None
        core.audit(
            s, actor=reviewer_id, event="verdict.recorded", subject_type="review_item",
            subject_id=item_id,
            data={"verdict_id": row.id, "verdict": str(v), "categories": row.categories,
                  "proposed_actions": row.proposed_actions, "credential": row.credential,
                  "delegate": delegate},
        )
        verdicts = s.execute(
            select(VerdictRow).where(VerdictRow.item_id == item_id).order_by(VerdictRow.id)
        ).scalars().all()
        cleared = {"claimed_by": None, "lease_expires_at": None}

        if v == Verdict.NEED_MORE_CONTEXT:
            core.item_transition(s, item_id, "ask_context", actor=reviewer_id, values=cleared)
            core.outbox(
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
            core.item_transition(s, item_id, "await_second", actor=reviewer_id, values=cleared)
            actions = self._stage_proposals(s, item, proposed, row)
            return DecideResult(item_id, ItemStatus.AWAITING_SECOND, row.id,
                                [action_dict(a) for a in actions])
        if len(verdicts) >= 2:
            first, second = verdicts[-2], verdicts[-1]
            if not _agree(first, second):
                return self._escalate(s, item, row, first, second)
        core.item_transition(
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
        kinds = [ActionKind(k)
                 for k in self.core.config.actions_for_verdict(str(v), list(categories))]
        if ActionKind.TERMINATE in kinds and ActionKind.SUSPEND not in kinds:
            kinds.insert(kinds.index(ActionKind.TERMINATE), ActionKind.SUSPEND)  # suspend first
        return tuple(dict.fromkeys(kinds))

    @staticmethod
    def _open_proposals(s: Session, decision_id: str) -> dict[str, Action]:
        return {
            a.kind: a
            for a in s.execute(
                select(Action).where(Action.decision_id == decision_id,
                                     Action.status == ActionStatus.PROPOSED)
            ).scalars()
        }

    def _stage_proposals(
        self, s: Session, item: ReviewItem, kinds: Sequence[ActionKind], verdict: VerdictRow
    ) -> list[Action]:
        """First of two verdicts: its actions exist as proposals carrying one approval."""
        out = []
        existing = self._open_proposals(s, item.decision_id)
        for k in kinds:
            a = existing.get(k) or self.core.new_action(
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
        core = self.core
        now = core.clock()
        core.item_transition(
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
            core.action_transition(s, a.id, "cancel", actor=SYSTEM,
                                   data={"reason": "reviewers disagreed; escalated"})
        senior = core.config.rules(item.queue).escalate_to or core.config.escalation_queue
        new_id = core.new_item(
            s, decision_id=item.decision_id, kind=ItemKind.ESCALATION, queue=senior,
            severity=item.severity, priority=item.priority + 50,
            reviewers_required=item.reviewers_required, account_id=item.account_id,
            content_sha256=item.content_sha256, parent_item_id=item.id,
        )
        return DecideResult(item.id, ItemStatus.ESCALATED, row.id, [], escalated_to=new_id)

    def _resolve(
        self, s: Session, item: ReviewItem, v: Verdict, verdicts: Sequence[VerdictRow]
    ) -> list[Action]:
        core = self.core
        approvers = verdicts[-2:] if len(verdicts) >= 2 else verdicts[-1:]
        if len(approvers) == 2 and approvers[0].credential == approvers[1].credential:
            # unreachable past check() and uq_verdict_item_credential; kept as the last word
            raise SameCredential()
        if item.kind == ItemKind.QA:
            if v in BENIGN:
                self._clear(s, item, approvers[-1])
            return []
        if item.kind in (ItemKind.APPEAL, ItemKind.CONTEXT):
            upheld = v in BENIGN
            appeal = s.execute(select(Appeal).where(Appeal.item_id == item.id)).scalar()
            if appeal is not None:
                appeal.status = "upheld" if upheld else "rejected"
                appeal.resolved_at = core.clock()
                core.audit(s, actor=approvers[-1].reviewer_id, event=f"appeal.{appeal.status}",
                           subject_type="appeal", subject_id=appeal.id,
                           data={"decision_id": item.decision_id})
            if upheld:
                self._clear(s, item, approvers[-1])
                return self.actions.overturn(s, item, approvers[-1])
            # confirmed: actions waiting on this look may now proceed when due
            return []
        kinds = [ActionKind(k) for k in approvers[-1].proposed_actions]
        open_ = self._open_proposals(s, item.decision_id)
        out: list[Action] = []
        for k in kinds:
            a = open_.pop(k, None) or core.new_action(
                s, decision_id=item.decision_id, item_id=item.id, kind=k,
                account_id=item.account_id, content_sha256=item.content_sha256,
                actor=approvers[-1].reviewer_id,
            )
            a.item_id = item.id
            a.approver_1, a.approver_1_verdict_id = approvers[0].reviewer_id, approvers[0].id
            if len(approvers) == 2:
                a.approver_2, a.approver_2_verdict_id = approvers[1].reviewer_id, approvers[1].id
            s.flush()
            a = core.action_transition(
                s, a.id, "approve", actor=approvers[-1].reviewer_id,
                data={"approvers": [x.reviewer_id for x in approvers],
                      "credentials": [x.credential for x in approvers],
                      "delegates": [x.via_delegate for x in approvers]},
            )
            out.append(self.actions.schedule(s, a))
        for a in open_.values():  # suggestions the reviewers did not confirm
            core.action_transition(s, a.id, "cancel", actor=approvers[-1].reviewer_id,
                                   data={"reason": "not confirmed by the verdict"})
        if v in BENIGN:
            self._clear(s, item, approvers[-1])
            out += self.actions.overturn(s, item, approvers[-1])
        elif v == Verdict.VIOLATING:
            banks.overrule_clearances(s, item, actor=approvers[-1].reviewer_id,
                                      at=self.core.clock(),
                                      threshold=self.core.config.pdq_threshold)
        return out

    def _clear(self, s: Session, item: ReviewItem, by: VerdictRow) -> None:
        """A person found this content benign: remember it, so it is not flagged again."""
        banks.clear_content(s, item, verdict_id=by.id, verdict=by.verdict,
                            actor=by.reviewer_id, at=self.core.clock())
