"""Reads of the record for the learning loop: what people concluded about each reviewed upload
(with every verdict, for a labelled dataset's provenance), stored decisions with their shadow
scores (to compare models on recent traffic), and flagged uploads people decided, counted by
context (the false-positive rate).  Repository functions: keyword-only, plain values out,
never a commit (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, case, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session

from review.schema import Content, Decision, ReviewItem, Upload, VerdictRow
from review.states import ItemKind, ItemStatus, Verdict

#: the decision ids asked about per query (an IN list stays well under every backend's limit)
_CHUNK = 500
#: the kinds of review whose resolution says what the content is; a context reply or an
#: appeal looks again at the same upload, so it is one of them too
_LABELLING_KINDS = (ItemKind.INITIAL, ItemKind.ESCALATION, ItemKind.QA, ItemKind.APPEAL,
                    ItemKind.CONTEXT)
#: decided reviews, as SQL text: the planner matches it to the partial index
#: ix_review_item_resolved only when the value is in the statement, not a parameter
_DECIDED = ReviewItem.status == literal_column(f"'{ItemStatus.DECIDED.value}'")
#: a context field's name, as it is written into SQL
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: reviews of what the policy flagged: the first look and the senior one after a disagreement
_FLAGGED_KINDS = (ItemKind.INITIAL, ItemKind.ESCALATION)


@dataclass(frozen=True, slots=True)
class ReviewedVerdict:
    """One reviewer's verdict on one review item."""

    id: int
    item_id: int
    reviewer_id: str
    verdict: str
    categories: tuple[str, ...]
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ReviewedItem:
    """One review of an upload, with its verdicts (all of them, in the order given)."""

    id: int
    kind: str
    status: str
    #: the verdict the item was decided with; None while open or once escalated
    resolution: str | None
    resolved_at: dt.datetime | None
    verdicts: tuple[ReviewedVerdict, ...]


@dataclass(frozen=True, slots=True)
class ReviewedDecision:
    """An upload at least one review decided: its content, context and every review of it."""

    decision_id: str
    upload_id: str
    content_sha256: str
    mime: str
    context: Mapping[str, Any]
    outcome: str
    model_version: str
    created_at: dt.datetime
    items: tuple[ReviewedItem, ...]
    #: the content's PDQ hash (64 hex digits) and quality as ingest stored them (None: the
    #: content was not hashed)
    content_pdq: str | None = None
    content_pdq_quality: int | None = None


def reviewed_decisions(
    s: Session, *, since: dt.datetime | None = None
) -> list[ReviewedDecision]:
    """Every decision with a review decided (at or after `since`, if given), with all of its
    reviews and their verdicts, by decision id."""
    q = select(ReviewItem.decision_id).where(_DECIDED, ReviewItem.kind.in_(_LABELLING_KINDS))
    if since is not None:
        q = q.where(ReviewItem.resolved_at >= since)
    ids = sorted(set(s.execute(q).scalars()))
    out: list[ReviewedDecision] = []
    for lo in range(0, len(ids), _CHUNK):
        out += _reviewed(s, ids[lo : lo + _CHUNK])
    return out


def _reviewed(s: Session, ids: Sequence[str]) -> list[ReviewedDecision]:
    verdicts: dict[int, list[ReviewedVerdict]] = {}
    for v in s.execute(
        select(VerdictRow.id, VerdictRow.item_id, VerdictRow.reviewer_id, VerdictRow.verdict,
               VerdictRow.categories, VerdictRow.created_at)
        .join(ReviewItem, ReviewItem.id == VerdictRow.item_id)
        .where(ReviewItem.decision_id.in_(ids))
        .order_by(VerdictRow.id)
    ):
        verdicts.setdefault(v.item_id, []).append(ReviewedVerdict(
            id=v.id, item_id=v.item_id, reviewer_id=v.reviewer_id, verdict=v.verdict,
            categories=tuple(v.categories or ()), created_at=v.created_at))
    items: dict[str, list[ReviewedItem]] = {}
    for it in s.execute(
        select(ReviewItem.id, ReviewItem.decision_id, ReviewItem.kind, ReviewItem.status,
               ReviewItem.resolution, ReviewItem.resolved_at)
        .where(ReviewItem.decision_id.in_(ids))
        .order_by(ReviewItem.id)
    ):
        items.setdefault(it.decision_id, []).append(ReviewedItem(
            id=it.id, kind=it.kind, status=it.status, resolution=it.resolution,
            resolved_at=it.resolved_at, verdicts=tuple(verdicts.get(it.id, ()))))
    rows = s.execute(
        select(Decision.id, Decision.outcome, Decision.model_version, Decision.created_at,
               Upload.id.label("upload_id"), Upload.content_sha256, Upload.context,
               Content.mime, Content.pdq, Content.pdq_quality)
        .join(Upload, Upload.id == Decision.upload_id)
        .join(Content, Content.sha256 == Upload.content_sha256)
        .where(Decision.id.in_(ids))
        .order_by(Decision.id)
    )
    return [
        ReviewedDecision(
            decision_id=r.id, upload_id=r.upload_id, content_sha256=r.content_sha256,
            mime=r.mime, context=dict(r.context or {}), outcome=r.outcome,
            model_version=r.model_version, created_at=r.created_at,
            items=tuple(items.get(r.id, ())), content_pdq=r.pdq,
            content_pdq_quality=r.pdq_quality,
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class TrafficDecision:
    """A stored decision as a model comparison replays it: what the model in force scored,
    what shadow models scored for the same image, the context, and what people concluded."""

    decision_id: str
    content_sha256: str
    created_at: dt.datetime
    outcome: str
    queue: str | None
    model_version: str
    scores: Mapping[str, float]
    #: [{"model_version", "scores", "error"}, ...] as scoring stored them
    shadow_scores: tuple[Mapping[str, Any], ...]
    context: Mapping[str, Any]
    #: the hash-bank match the decision was made with (replayed as it was)
    bank_match: str | None
    #: the resolution people reached on its latest decided review, if any
    resolution: str | None


def iter_traffic(
    s: Session, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
    limit: int | None = None, batch: int = 1000,
) -> Iterator[TrafficDecision]:
    """Stored decisions made in [since, until), oldest first, with what people concluded."""
    yielded = 0
    last: tuple[dt.datetime, str] | None = None
    while limit is None or yielded < limit:
        q = (select(Decision, Upload.content_sha256, Upload.context)
             .join(Upload, Upload.id == Decision.upload_id))
        if since is not None:
            q = q.where(Decision.created_at >= since)
        if until is not None:
            q = q.where(Decision.created_at < until)
        if last is not None:
            q = q.where((Decision.created_at > last[0])
                        | ((Decision.created_at == last[0]) & (Decision.id > last[1])))
        take = batch if limit is None else min(batch, limit - yielded)
        rows: Sequence[Any] = s.execute(
            q.order_by(Decision.created_at, Decision.id).limit(take)).all()
        if not rows:
            return
        resolutions = _resolutions(s, [r[0].id for r in rows])
        for d, sha, context in rows:
            yield TrafficDecision(
                decision_id=d.id, content_sha256=sha, created_at=d.created_at,
                outcome=d.outcome, queue=d.queue, model_version=d.model_version,
                scores={k: float(v) for k, v in (d.scores or {}).items()},
                shadow_scores=tuple(d.shadow_scores or ()), context=dict(context or {}),
                bank_match=(d.reasons or {}).get("bank_match"),
                resolution=resolutions.get(d.id),
            )
        yielded += len(rows)
        last = (rows[-1][0].created_at, rows[-1][0].id)


def _resolutions(s: Session, ids: Sequence[str]) -> dict[str, str]:
    """decision id -> the resolution of its latest decided review (appeals included: an upheld
    appeal is people's last word on the upload)."""
    out: dict[str, str] = {}
    for decision_id, resolution in s.execute(
        select(ReviewItem.decision_id, ReviewItem.resolution)
        .where(ReviewItem.decision_id.in_(ids), ReviewItem.status == ItemStatus.DECIDED,
               ReviewItem.kind.in_(_LABELLING_KINDS), ReviewItem.resolution.is_not(None))
        .order_by(ReviewItem.resolved_at, ReviewItem.id)
    ):
        if resolution is not None:
            out[decision_id] = resolution
    return out


@dataclass(frozen=True, slots=True)
class FlaggedDecided:
    """How many flagged uploads with these context values and this outcome people decided,
    and how many of them they found benign."""

    #: the requested context fields' stored values (None where the upload had none)
    context: Mapping[str, Any]
    #: the queue the policy routed them to
    queue: str
    decided: int
    benign: int


class _JsonText(ColumnElement[str]):
    """A top-level field of a JSON column as its JSON text (`true`, `"public"`, NULL when
    absent), the same on SQLite and PostgreSQL, so rows can be grouped by it (PostgreSQL's
    json type has no equality, and SQLite's json_extract turns true into 1)."""

    # the field name is part of the SQL text, so a cached statement must not be reused for
    # another field: not cached
    inherit_cache = False
    type = String()

    def __init__(self, column: Any, field: str) -> None:
        if not _FIELD.fullmatch(field):
            raise ValueError(f"not a context field name: {field!r}")
        self.column = column
        self.field = field


@compiles(_JsonText)
def _json_text_default(element: _JsonText, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    # inline, not a bound parameter: PostgreSQL matches a GROUP BY expression to the select
    # list's only when they are the same text, and two parameters never are
    return f"(({col} -> '{element.field}')::text)"


@compiles(_JsonText, "sqlite")
def _json_text_sqlite(element: _JsonText, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    path = f"'$.\"{element.field}\"'"
    return (f"(CASE json_type({col}, {path}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
            f"ELSE json_quote(json_extract({col}, {path})) END)")


def flagged_decided(
    s: Session, *, fields: Sequence[str], since: dt.datetime | None = None
) -> list[FlaggedDecided]:
    """Uploads the policy flagged (held or sent to review) whose first or escalated review
    was decided (at or after `since`), counted by the context `fields` and queue; `benign`
    counts benign and benign_medical resolutions.  One grouped query, whatever the volume."""
    cols = [_JsonText(Upload.__table__.c.context, f).label(f) for f in fields]
    benign_count = func.sum(case(
        (ReviewItem.resolution.in_([Verdict.BENIGN, Verdict.BENIGN_MEDICAL]), 1), else_=0,
    ), type_=Integer)
    q = (
        select(*cols, ReviewItem.queue, func.count().label("decided"),
               benign_count.label("benign"))
        .select_from(ReviewItem)
        .join(Decision, Decision.id == ReviewItem.decision_id)
        .join(Upload, Upload.id == Decision.upload_id)
        .where(_DECIDED,
               ReviewItem.kind.in_(_FLAGGED_KINDS),
               Decision.outcome.in_(["review", "hold"]))
        .group_by(*cols, ReviewItem.queue)
    )
    if since is not None:
        q = q.where(ReviewItem.resolved_at >= since)
    out = []
    for row in s.execute(q):
        values = {f: _json_text(getattr(row, f)) for f in fields}
        out.append(FlaggedDecided(context=values, queue=row.queue, decided=int(row.decided),
                                  benign=int(row.benign or 0)))
    return out


def _json_text(value: str | None) -> Any:
    """A stored context value back from its JSON text (None where the upload had none)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:  # pragma: no cover - the database rendered it from JSON
        return value
