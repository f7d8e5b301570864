"""Request and response bodies of the API, one family per resource (`XCreate`, `XPublic`).

Requests forbid unknown fields (a typo in a context or verdict must not pass silently);
responses describe exactly what the service layer returns, so the OpenAPI schema is a contract
that schemathesis checks against the live server.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pipeline.apikeys import Scope
from review import MAX_CLAIM_BATCH, ItemKind, ItemStatus, Verdict

Outcome = Literal["allow", "hold", "review"]
#: ids the platform chooses: printable, no control characters, at most the database's 128
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
]
ReviewerId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")
]
QueueName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Statement = Annotated[str, StringConstraints(min_length=1, max_length=5000)]
#: item and action ids fit a 32-bit integer on every backend
ItemId = Annotated[int, Field(ge=1, le=2**31 - 1)]

VerdictName = Literal["violating", "benign", "benign_medical", "need_more_context"]
assert set(VerdictName.__args__) == {v.value for v in Verdict}  # type: ignore[attr-defined]
ItemStatusName = Literal[
    "pending", "claimed", "awaiting_second", "awaiting_context", "decided", "escalated"
]
assert set(ItemStatusName.__args__) == {s.value for s in ItemStatus}  # type: ignore[attr-defined]
ItemKindName = Literal["initial", "qa", "appeal", "escalation", "context"]
assert set(ItemKindName.__args__) == {k.value for k in ItemKind}  # type: ignore[attr-defined]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- errors ----------------------------------------------------------------------------------
class ErrorPublic(_Public):
    """Every error: a stable machine-readable code and a sentence for people."""

    code: str = Field(examples=["image.corrupt"])
    detail: str = Field(examples=["The image could not be decoded: it is truncated or corrupt."])


# ---- classify ----------------------------------------------------------------------------------
class ClassifyPublic(_Public):
    decision_id: str
    account_id: str
    upload_id: str
    content_sha256: str | None
    outcome: Outcome
    #: the review queue, when a person will look (hold, review, or a QA sample)
    queue: str | None
    review_item_id: int | None
    scores: dict[str, float]
    model_version: str
    policy_version: str
    #: the statement of reasons at scoring time: rules with thresholds, context effects
    reasons: dict[str, Any]
    #: true when this upload was scored before and the stored decision is returned
    already_scored: bool
    statement_url: str


# ---- decisions ---------------------------------------------------------------------------------
class UploadRef(_Public):
    id: str
    account_id: str
    content_sha256: str
    received_at: dt.datetime


class VerdictPublic(_Public):
    reviewer: str
    verdict: str
    categories: list[str]
    note: str
    at: dt.datetime
    #: for an escalation: the item whose reviewers disagreed
    from_item: int | None = None
    #: recorded through a delegate (a console, the CLI) acting for the reviewer (issue 16)
    via_delegate: bool | None = None


class ReviewRecord(_Public):
    item_id: int
    kind: str
    queue: str
    status: str
    resolution: str | None
    #: shown once the item is closed (no anchoring while reviewers work)
    verdicts: list[VerdictPublic]


class ActionPublic(_Public):
    id: int
    decision_id: str
    item_id: int | None
    account_id: str
    content_sha256: str
    kind: str
    target: Literal["content", "account"]
    irreversible: bool
    urgent: bool
    status: str
    approvers: list[str]
    reverses_action_id: int | None
    not_before: dt.datetime | None
    executed_at: dt.datetime | None


class AppealRef(_Public):
    id: int
    status: str
    statement: str
    filed_at: dt.datetime


class HowToAppeal(_Public):
    until: dt.datetime
    how: str
    #: the request to make, and the same on the command line
    api: str
    cli: str


class StatementOfReasons(_Public):
    """What a user notice or an auditor reads: everything that led to the decision."""

    decision_id: str
    upload: UploadRef
    outcome: Outcome
    queue: str | None
    detected: dict[str, float]
    model_version: str
    policy_version: str
    rules: list[dict[str, Any]]
    context: dict[str, Any]
    context_effects: list[str]
    #: the hash-bank entry that routed this upload: bank, entry, distance, and for a
    #: clearance who cleared it and when (None: no bank matched)
    bank_match: dict[str, Any] | None = None
    reviews: list[ReviewRecord]
    actions: list[ActionPublic]
    appeals: list[AppealRef]
    how_to_appeal: HowToAppeal


class ContextReplyCreate(_Request):
    """The user's reply to a notice or to a reviewer's request for context."""

    statement: Statement
    #: the upload context as the user now states it (same fields as classify)
    context: dict[str, Any] = Field(default_factory=dict)


class ContextReplyPublic(_Public):
    decision_id: str
    #: the review item that will look at the reply before any action runs
    item_id: int


# ---- appeals -----------------------------------------------------------------------------------
class AppealCreate(_Request):
    decision_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    #: the user's own words ("I sent this to my doctor")
    statement: Statement
    #: the upload context as the user states it (same fields as classify)
    context: dict[str, Any] = Field(default_factory=dict)
    #: if given, must be the account the decision is about
    account_id: ExternalId | None = None


class AppealPublic(_Public):
    appeal_id: int
    decision_id: str
    #: the review item; a reviewer who did not decide this upload before will take it
    item_id: int
    status: Literal["open", "upheld", "rejected"]


# ---- review --------------------------------------------------------------------------------------
class ReviewItemPublic(_Public):
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
    outcome: Outcome
    scores: dict[str, float]
    reasons: dict[str, Any]
    context: dict[str, Any]
    due_at: dt.datetime
    created_at: dt.datetime
    claimed_by: str | None
    lease_expires_at: dt.datetime | None
    proposed_actions: list[str]
    verdicts: list[VerdictPublic]
    appeal_statement: str | None


class ClaimCreate(_Request):
    queue: QueueName | None = None
    item_id: ItemId | None = None
    #: who claims; or the X-Reviewer header
    reviewer: ReviewerId | None = None


class ClaimBatchCreate(_Request):
    queue: QueueName | None = None
    #: how many items to lease at once, each with its own lease and audit event
    count: Annotated[int, Field(ge=1, le=MAX_CLAIM_BATCH)] = 10
    #: who claims; or the X-Reviewer header
    reviewer: ReviewerId | None = None


class ClaimBatchPublic(_Public):
    items: list[ReviewItemPublic]


class VerdictCreate(_Request):
    verdict: VerdictName
    categories: Annotated[list[Annotated[str, StringConstraints(max_length=64)]],
                          Field(max_length=32)] = Field(default_factory=list)
    note: Annotated[str, StringConstraints(max_length=5000)] = ""
    #: who decides (must hold the lease); or the X-Reviewer header
    reviewer: ReviewerId | None = None


class VerdictResultPublic(_Public):
    item_id: int
    status: ItemStatusName
    verdict_id: int
    actions: list[ActionPublic]
    escalated_to: int | None


class ReleaseCreate(_Request):
    reviewer: ReviewerId | None = None


class ReleasePublic(_Public):
    item_id: int
    released: bool


class QueueStatsPublic(_Public):
    queue: str
    depth: int
    claimed: int
    oldest_age_s: float
    breaches: int
    sla_s: float | None


# ---- keys ----------------------------------------------------------------------------------------
class KeyCreate(_Request):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=5)]
    rate_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    #: the reviewer the key belongs to: it acts as them, and names no one else
    reviewer: ReviewerId | None = None


class KeyPublic(_Public):
    id: int
    name: str
    prefix: str
    scopes: list[Scope]
    rate_per_minute: int | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    reviewer: str | None = None


class KeyCreatedPublic(KeyPublic):
    #: the key itself: shown this once, stored only as its sha256
    key: str


# ---- health --------------------------------------------------------------------------------------
class LivePublic(_Public):
    status: Literal["ok"]


class ReadyPublic(_Public):
    status: Literal["ready"]
    model_version: str
    policy_version: str
