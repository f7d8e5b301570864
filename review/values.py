"""The values that cross the review service's boundary: what the pipeline hands in (an upload
and its routing) and what it gets back (a recorded decision, a reviewer's view of an item, the
outcome of a verdict, an action as a plain dict)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from review.schema import Action


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
    #: the PDQ hash (64 hex digits) and its quality, computed at ingest (None: not hashed)
    pdq: str | None = None
    pdq_quality: int | None = None


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
