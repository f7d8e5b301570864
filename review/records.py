"""Plain reads of the record for callers outside review (the API, scoring, the policy
backtest, the Label Studio sync): decisions with their uploads, appeals, a review item's
content and lease, an account's history, and the resolutions people reached.  Repository
functions: keyword-only, plain values out, never a commit (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from review.schema import Appeal, Content, Decision, ReviewItem, Upload, VerdictRow
from review.states import ItemKind, ItemStatus


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A decision and the upload it was made for."""

    id: str
    outcome: str
    queue: str | None
    scores: Mapping[str, Any]
    reasons: Mapping[str, Any]
    model_version: str
    policy_version: str
    created_at: dt.datetime
    upload_id: str
    external_id: str
    account_id: str
    content_sha256: str
    context: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AppealRecord:
    id: int
    decision_id: str
    item_id: int
    status: str
    statement: str
    created_at: dt.datetime
    resolved_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ItemState:
    """Where a review item stands: its queue, status and lease."""

    id: int
    queue: str
    status: str
    claimed_by: str | None
    lease_expires_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class AccountHistory:
    """An account's earlier record: decisions per outcome, verdicts per verdict."""

    outcomes: dict[str, int]
    verdicts: dict[str, int]


def _decision(d: Decision, u: Upload) -> DecisionRecord:
    return DecisionRecord(
        id=d.id, outcome=d.outcome, queue=d.queue, scores=d.scores, reasons=d.reasons,
        model_version=d.model_version, policy_version=d.policy_version,
        created_at=d.created_at, upload_id=u.id, external_id=u.external_id,
        account_id=u.account_id, content_sha256=u.content_sha256, context=u.context,
    )


def get_decision(s: Session, *, decision_id: str) -> DecisionRecord | None:
    row = s.execute(
        select(Decision, Upload).join(Upload, Upload.id == Decision.upload_id)
        .where(Decision.id == decision_id)
    ).first()
    return None if row is None else _decision(*row)


def get_decisions(s: Session, *, decision_ids: Iterable[str]) -> dict[str, DecisionRecord]:
    """Many decisions with their uploads, by id, in a few reads (a batch job's repeats)."""
    wanted = list(dict.fromkeys(decision_ids))
    out: dict[str, DecisionRecord] = {}
    for i in range(0, len(wanted), 400):  # far below every backend's bound-parameter limit
        rows = s.execute(
            select(Decision, Upload).join(Upload, Upload.id == Decision.upload_id)
            .where(Decision.id.in_(wanted[i : i + 400]))
        ).all()
        out.update((d.id, _decision(d, u)) for d, u in rows)
    return out


def iter_decisions(s: Session, *, batch: int = 1000) -> Iterator[DecisionRecord]:
    """Every decision with its upload, by decision id, read `batch` at a time."""
    last = ""
    while True:
        rows = s.execute(
            select(Decision, Upload)
            .join(Upload, Upload.id == Decision.upload_id)
            .where(Decision.id > last)
            .order_by(Decision.id)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from (_decision(d, u) for d, u in rows)
        last = rows[-1][0].id


def human_resolutions(s: Session) -> dict[str, str]:
    """decision id -> the resolution people reached on its initial, escalation or QA review
    (a later review wins: an escalation's over the item it took over)."""
    rows = s.execute(
        select(ReviewItem.decision_id, ReviewItem.resolution)
        .where(
            ReviewItem.status == ItemStatus.DECIDED,
            ReviewItem.kind.in_([ItemKind.INITIAL, ItemKind.ESCALATION, ItemKind.QA]),
            ReviewItem.resolution.is_not(None),
        )
        .order_by(ReviewItem.id)
    ).all()
    return {d: r for d, r in rows if r is not None}


def get_appeal(s: Session, *, appeal_id: int) -> AppealRecord | None:
    a = s.get(Appeal, appeal_id)
    if a is None:
        return None
    return AppealRecord(id=a.id, decision_id=a.decision_id, item_id=a.item_id, status=a.status,
                        statement=a.statement, created_at=a.created_at,
                        resolved_at=a.resolved_at)


def item_content(s: Session, *, item_id: int) -> str | None:
    """The sha256 of the content review item `item_id` shows (None: no such item)."""
    return s.execute(
        select(ReviewItem.content_sha256).where(ReviewItem.id == item_id)
    ).scalar_one_or_none()


def verdict_credentials(s: Session, *, item_id: int) -> list[str]:
    """The credentials the item's verdicts came through, oldest first (the CLI's check that a
    second operator is a different person, not only a different host)."""
    return list(s.execute(select(VerdictRow.credential).where(VerdictRow.item_id == item_id)
                          .order_by(VerdictRow.id)).scalars())


def content_mime(s: Session, *, sha256: str) -> str | None:
    """The media type the content was received as (None: unknown content)."""
    return s.execute(select(Content.mime).where(Content.sha256 == sha256)).scalar_one_or_none()


def item_state(s: Session, *, item_id: int) -> ItemState | None:
    """Where review item `item_id` stands (None: no such item)."""
    row = s.execute(
        select(ReviewItem.id, ReviewItem.queue, ReviewItem.status, ReviewItem.claimed_by,
               ReviewItem.lease_expires_at).where(ReviewItem.id == item_id)
    ).first()
    return None if row is None else ItemState(*row)


def account_history(s: Session, *, account_id: str, excluding_decision: str) -> AccountHistory:
    """The account's decisions and verdicts other than those on `excluding_decision` (the one
    a reviewer is looking at)."""
    outcomes = s.execute(
        select(Decision.outcome, func.count())
        .join(Upload, Upload.id == Decision.upload_id)
        .where(Upload.account_id == account_id, Decision.id != excluding_decision)
        .group_by(Decision.outcome)
    ).all()
    verdicts = s.execute(
        select(VerdictRow.verdict, func.count())
        .join(ReviewItem, ReviewItem.id == VerdictRow.item_id)
        .where(ReviewItem.account_id == account_id,
               ReviewItem.decision_id != excluding_decision)
        .group_by(VerdictRow.verdict)
    ).all()
    return AccountHistory(outcomes={o: int(n) for o, n in outcomes},
                          verdicts={v: int(n) for v, n in verdicts})
