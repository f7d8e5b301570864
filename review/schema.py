"""The database schema of record.  Invariants live here as constraints, not only in Python.

Alembic migrations under review/migrations create exactly this (a test compares them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from review.states import (
    ACCOUNT_ACTIONS,
    AUTOMATED_ACTIONS,
    CLAIMABLE,
    CLOSED_ITEM_STATUSES,
    CONTENT_ACTIONS,
    IRREVERSIBLE_ACTIONS,
    ActionKind,
    ActionStatus,
    ItemKind,
    ItemStatus,
    Verdict,
    sql_in,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


def _enum_check(column: str, values: frozenset[str] | set[str], name: str) -> CheckConstraint:
    return CheckConstraint(f"{column} IN {sql_in(set(values))}", name=name)


class Reviewer(Base):
    __tablename__ = "reviewer"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime]


class ReviewerQueue(Base):
    """Queue membership: a reviewer can claim, see and decide only in their queues."""

    __tablename__ = "reviewer_queue"
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("reviewer.id"), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), primary_key=True)


class Content(Base):
    """One image, known by the sha256 of its bytes."""

    __tablename__ = "content"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime]
    #: the PDQ hash (64 hex digits) and its quality, computed once at ingest (None: not hashed)
    pdq: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pdq_quality: Mapped[int | None] = mapped_column(Integer, nullable=True)
    __table_args__ = (CheckConstraint("length(sha256) = 64", name="sha256_len"),)


class Upload(Base):
    """One arrival of a content, with its account and context.  Scored exactly once."""

    __tablename__ = "upload"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    content_sha256: Mapped[str] = mapped_column(ForeignKey("content.sha256"), index=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    #: the platform's own id for this upload; (account, external id) is unique
    external_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    context: Mapped[dict[str, Any]]
    received_at: Mapped[dt.datetime]
    __table_args__ = (UniqueConstraint("account_id", "external_id", name="uq_upload_account_ext"),)


class Decision(Base):
    """What the policy concluded for an upload: outcome, reasons, model and policy versions."""

    __tablename__ = "decision"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("upload.id"), unique=True)
    outcome: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[str] = mapped_column(String(64))
    scores: Mapped[dict[str, Any]]
    #: the statement of reasons at scoring time: rules fired, thresholds, context moves
    reasons: Mapped[dict[str, Any]]
    queue: Mapped[str | None] = mapped_column(String(64))
    #: what shadow models scored for the same image: kept for comparison, never consulted
    shadow_scores: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime]
    __table_args__ = (
        _enum_check("outcome", {"allow", "hold", "review"}, "outcome"),
        CheckConstraint("outcome = 'allow' OR queue IS NOT NULL", name="routed_has_queue"),
    )


class ReviewItem(Base):
    """One unit of human work in a queue."""

    __tablename__ = "review_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decision.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24))
    reviewers_required: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    parent_item_id: Mapped[int | None] = mapped_column(ForeignKey("review_item.id"))
    claimed_by: Mapped[str | None] = mapped_column(ForeignKey("reviewer.id"))
    lease_expires_at: Mapped[dt.datetime | None]
    due_at: Mapped[dt.datetime]
    #: the claim order: the SLA deadline brought forward by priority.  Ordering by it ranks
    #: items by (time to breach - weight x priority), since "now" is the same for every row
    rank_at: Mapped[dt.datetime]
    resolution: Mapped[str | None] = mapped_column(String(24))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    resolved_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _enum_check("status", set(ItemStatus), "status"),
        _enum_check("kind", set(ItemKind), "kind"),
        CheckConstraint("reviewers_required IN (1, 2)", name="reviewers_required"),
        CheckConstraint(
            "(status = 'claimed' AND claimed_by IS NOT NULL AND lease_expires_at IS NOT NULL)"
            " OR (status <> 'claimed' AND claimed_by IS NULL AND lease_expires_at IS NULL)",
            name="lease_iff_claimed",
        ),
        CheckConstraint(
            f"(status IN {sql_in(set(CLOSED_ITEM_STATUSES))}) = (resolved_at IS NOT NULL)",
            name="resolved_iff_closed",
        ),
        CheckConstraint(
            f"resolution IS NULL OR resolution IN {sql_in(set(Verdict))}", name="resolution"
        ),
        # exactly one initial item per decision: an upload reaches one review, not two
        Index(
            "uq_review_item_initial",
            "decision_id",
            unique=True,
            sqlite_where=text("kind = 'initial'"),
            postgresql_where=text("kind = 'initial'"),
        ),
        # open items by queue and status (stats, listings)
        Index("ix_review_item_claim", "queue", "status", "rank_at", "id"),
        # the claim query: only claimable rows, already in claim order within a queue, so a
        # claim reads the queue's first rows instead of sorting the whole queue
        Index(
            "ix_review_item_claimable",
            "queue",
            "rank_at",
            "id",
            sqlite_where=text(f"status IN {sql_in(set(CLAIMABLE))}"),
            postgresql_where=text(f"status IN {sql_in(set(CLAIMABLE))}"),
        ),
        Index("ix_review_item_lease", "status", "lease_expires_at"),
        # decided reviews in a window of time: the false-positive rate, the dataset export
        Index(
            "ix_review_item_resolved",
            "resolved_at",
            sqlite_where=text("status = 'decided'"),
            postgresql_where=text("status = 'decided'"),
        ),
    )


class VerdictRow(Base):
    """What one reviewer concluded on one item.  One verdict per reviewer per item, and one per
    credential per item: the two people of the two-person rule come through two doors."""

    __tablename__ = "verdict"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_item.id"), index=True)
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("reviewer.id"))
    verdict: Mapped[str] = mapped_column(String(24))
    categories: Mapped[list[Any]]
    proposed_actions: Mapped[list[Any]]
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime]
    #: the credential the verdict came through (`key:7`, `oidc:…`, `os:user@host`,
    #: `labelstudio:3`; `direct:<reviewer>` for in-process callers, migration 0013)
    credential: Mapped[str] = mapped_column(String(128))
    #: acting for the reviewer through a credential that may act for many (a console, the CLI)
    via_delegate: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        UniqueConstraint("item_id", "reviewer_id", name="uq_verdict_item_reviewer"),
        # an index, not a constraint: SQLite adds one to a table that rows point at (0013)
        Index("uq_verdict_item_credential", "item_id", "credential", unique=True),
        UniqueConstraint("id", "reviewer_id", name="uq_verdict_id_reviewer"),
        _enum_check("verdict", set(Verdict), "verdict"),
    )


class Action(Base):
    """Something done to content or an account: proposed, approved by people, executed."""

    __tablename__ = "action"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decision.id"), index=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("review_item.id"))
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    content_sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))
    target: Mapped[str] = mapped_column(String(8))
    irreversible: Mapped[bool] = mapped_column(Boolean)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    approver_1: Mapped[str | None] = mapped_column(String(64))
    approver_1_verdict_id: Mapped[int | None] = mapped_column(Integer)
    approver_2: Mapped[str | None] = mapped_column(String(64))
    approver_2_verdict_id: Mapped[int | None] = mapped_column(Integer)
    reverses_action_id: Mapped[int | None] = mapped_column(ForeignKey("action.id"))
    #: not executed before this instant (notice period, or the appeal window for erasure)
    not_before: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    executed_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _enum_check("status", set(ActionStatus), "status"),
        _enum_check("kind", set(ActionKind), "kind"),
        CheckConstraint(
            f"(target = 'content' AND kind IN {sql_in(set(CONTENT_ACTIONS))})"
            f" OR (target = 'account' AND kind IN {sql_in(set(ACCOUNT_ACTIONS))})",
            name="target_matches_kind",
        ),
        CheckConstraint(
            f"irreversible = (kind IN {sql_in(set(IRREVERSIBLE_ACTIONS))})", name="irreversible"
        ),
        # invariant 1: past `proposed`, only the automated content hold may lack a person
        CheckConstraint(
            "status IN ('proposed', 'cancelled') OR approver_1 IS NOT NULL"
            f" OR kind IN {sql_in(set(AUTOMATED_ACTIONS))}",
            name="human_approved",
        ),
        # invariant 2: irreversible steps need two distinct people
        CheckConstraint(
            "NOT irreversible OR status IN ('proposed', 'cancelled')"
            " OR (approver_1 IS NOT NULL AND approver_2 IS NOT NULL AND approver_1 <> approver_2)",
            name="two_people",
        ),
        CheckConstraint("approver_2 IS NULL OR approver_1 IS NOT NULL", name="approver_order"),
        # the approver foreign keys below are MATCH SIMPLE: a name without its verdict id would
        # not be checked at all, so each name comes with its verdict or not at all
        CheckConstraint("(approver_1 IS NULL) = (approver_1_verdict_id IS NULL)",
                        name="approver_1_has_verdict"),
        CheckConstraint("(approver_2 IS NULL) = (approver_2_verdict_id IS NULL)",
                        name="approver_2_has_verdict"),
        CheckConstraint("kind <> 'delete_data' OR not_before IS NOT NULL", name="erasure_waits"),
        CheckConstraint(
            "(status = 'executed' OR status = 'reversed') = (executed_at IS NOT NULL)",
            name="executed_at",
        ),
        # an approver is a real verdict by that very reviewer
        ForeignKeyConstraint(
            ["approver_1_verdict_id", "approver_1"],
            ["verdict.id", "verdict.reviewer_id"],
            name="fk_action_approver_1_verdict",
        ),
        ForeignKeyConstraint(
            ["approver_2_verdict_id", "approver_2"],
            ["verdict.id", "verdict.reviewer_id"],
            name="fk_action_approver_2_verdict",
        ),
        Index("ix_action_status", "status", "not_before"),
    )


class Appeal(Base):
    """The user's request for another look, with their own context."""

    __tablename__ = "appeal"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decision.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_item.id"), unique=True)
    statement: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    resolved_at: Mapped[dt.datetime | None]
    __table_args__ = (_enum_check("status", {"open", "upheld", "rejected"}, "status"),)


class Exposure(Base):
    """A reviewer's claim on a severe queue, counted against their per-shift cap."""

    __tablename__ = "exposure"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("reviewer.id"))
    queue: Mapped[str] = mapped_column(String(64))
    item_id: Mapped[int] = mapped_column(ForeignKey("review_item.id"))
    at: Mapped[dt.datetime]
    __table_args__ = (Index("ix_exposure_reviewer_at", "reviewer_id", "at"),)


class Outbox(Base):
    """Messages to the platform, written in the same transaction as the change they announce."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime]
    delivered_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _enum_check("status", {"pending", "delivered", "dead"}, "status"),
        Index("ix_outbox_due", "status", "next_attempt_at"),
    )


class AuditEvent(Base):
    """One row of the hash-chained audit log; written in the transaction it records.

    The log is a few parallel chains (`chain` names the head it hangs from) so that audited
    transactions do not all queue on one row: each transaction links its events to a head no
    other transaction holds.  Every event is in exactly one chain; each chain is verified on its
    own, and its head catches a truncated tail."""

    __tablename__ = "audit_event"
    chain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False,
                                       server_default="1")
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    __table_args__ = (Index("ix_audit_subject", "subject_type", "subject_id"),)


class AuditHead(Base):
    """A chain's head (its id is the chain's number): locked by the transaction that appends
    to that chain, so a chain cannot fork."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (CheckConstraint("id >= 1", name="chain_number"),)


class ApiKey(Base):
    """A key for the REST API.  Only the sha256 of the key is stored; the prefix names it."""

    __tablename__ = "api_key"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    #: the first characters of the key, shown in listings and logs to tell keys apart
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]]
    #: None: the server's default rate
    rate_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    #: the reviewer this key belongs to (it acts as them and no one else); None: a service key
    reviewer_id: Mapped[str | None] = mapped_column(ForeignKey("reviewer.id"))
    __table_args__ = (
        CheckConstraint("length(secret_sha256) = 64", name="sha256_len"),
        CheckConstraint("rate_per_minute IS NULL OR rate_per_minute > 0", name="rate_positive"),
    )


class ApiRateBucket(Base):
    """A token bucket shared by every API process (`lookfirst serve --workers N`), named
    `key:<id>` for an API key, `oidc:<reviewer>` for a reviewer's bearer tokens (migration
    0015): one `UPDATE ... RETURNING` takes a token, so a rate holds however many processes
    serve it.  `at` is seconds since the epoch (plain arithmetic on every backend).  On
    PostgreSQL the table is UNLOGGED: no WAL flush per request, and a crash only refills
    every bucket."""

    __tablename__ = "api_rate_bucket"
    bucket: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    at: Mapped[float] = mapped_column(Double)


class IdempotencyRecord(Base):
    """The stored response to a request sent with an Idempotency-Key, per API key."""

    __tablename__ = "idempotency"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_key.id"))
    key: Mapped[str] = mapped_column(String(255))
    #: sha256 of what the request asked for; the same key with another request is refused
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime]
    __table_args__ = (
        UniqueConstraint("api_key_id", "key", name="uq_idempotency_api_key_key"),
        Index("ix_idempotency_created_at", "created_at"),
    )


# ---- Label Studio sync (the reviewer UI); lookfirst stays the system of record ---------------
class LabelStudioProject(Base):
    """The Label Studio project that shows one review queue."""

    __tablename__ = "labelstudio_project"
    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer, unique=True)
    #: sha256 of the labelling config last validated and applied
    config_sha256: Mapped[str] = mapped_column(String(64))
    maximum_annotations: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class LabelStudioTask(Base):
    """One review item shown as one Label Studio task: at most one task per item."""

    __tablename__ = "labelstudio_task"
    item_id: Mapped[int] = mapped_column(ForeignKey("review_item.id"), primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[dt.datetime]


class LabelStudioReviewer(Base):
    """A Label Studio user (by email) acting as a lookfirst reviewer."""

    __tablename__ = "labelstudio_reviewer"
    email: Mapped[str] = mapped_column(String(254), primary_key=True)
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("reviewer.id"))
    ls_user_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    created_at: Mapped[dt.datetime]


class LabelStudioAnnotation(Base):
    """Each Label Studio annotation is judged once: recorded as a verdict, or refused."""

    __tablename__ = "labelstudio_annotation"
    annotation_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_item.id"))
    ls_user_id: Mapped[int | None] = mapped_column(Integer)
    reviewer_id: Mapped[str | None] = mapped_column(String(128))
    #: recorded | refused (not a verdict: unknown or not entitled user, bad form, closed item)
    status: Mapped[str] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(64))
    verdict_id: Mapped[int | None] = mapped_column(ForeignKey("verdict.id"))
    #: how the annotation reached lookfirst: webhook | poller
    via: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    #: sha256 of the result judged (an edit in Label Studio changes it: judged again)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    #: the last edit's judgement: the refusal's code (None: no edit, or recorded), and when
    edit_code: Mapped[str | None] = mapped_column(String(64))
    edited_at: Mapped[dt.datetime | None]
    __table_args__ = (
        _enum_check("status", {"recorded", "refused"}, "status"),
        Index("ix_labelstudio_annotation_item", "item_id"),
    )


class LabelStudioSync(Base):
    """Named sync state (last poll, last error) for `lookfirst labelstudio status`."""

    __tablename__ = "labelstudio_sync"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[dt.datetime]


class BankEntry(Base):
    """A hash bank entry: content known to violate (imported lists) or cleared by a person
    (fed by benign verdicts), matched by exact sha256 or by PDQ within the Hamming threshold.

    `seq` is the bank's change counter at the entry's last change (added, quarantined,
    demoted, removed): a process holding a PDQ index catches up with "entries with seq > the
    last I saw".  `scope_account` '' is a global entry, otherwise the one account it applies to
    (an empty string rather than NULL, so that the unique constraint holds for global ones)."""

    __tablename__ = "bank_hash"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bank: Mapped[str] = mapped_column(String(24))
    kind: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(64))
    quality: Mapped[int | None] = mapped_column(Integer, nullable=True)
    scope_account: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(12), default="active")
    source: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(500), default="")
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    origin_item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    __table_args__ = (
        _enum_check("bank", {"violating", "cleared_benign"}, "bank"),
        _enum_check("kind", {"sha256", "pdq"}, "kind"),
        _enum_check("state", {"active", "quarantined", "demoted", "removed"}, "state"),
        CheckConstraint("length(value) = 64", name="value_len"),
        UniqueConstraint("bank", "kind", "value", "scope_account", name="uq_bank_hash_entry"),
        Index("ix_bank_hash_kind_value", "kind", "value"),
    )


class BankCounter(Base):
    """The bank's change counter (one row): taken with UPDATE ... RETURNING, so its row lock
    orders bank changes by commit, and "seq > my last" never skips a slower transaction."""

    __tablename__ = "bank_counter"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class BankMatch(Base):
    """One upload matched one bank entry (what flood protection counts, and what a reviewer
    confirms or marks false)."""

    __tablename__ = "bank_match"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("bank_hash.id"))
    decision_id: Mapped[str] = mapped_column(ForeignKey("decision.id"), index=True)
    account_id: Mapped[str] = mapped_column(String(128))
    distance: Mapped[int] = mapped_column(Integer)
    matched_at: Mapped[dt.datetime]
    verdict: Mapped[str | None] = mapped_column(String(12), nullable=True)
    judged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    __table_args__ = (
        CheckConstraint("verdict IS NULL OR verdict IN ('confirmed', 'false')", name="verdict"),
        Index("ix_bank_match_entry_at", "entry_id", "matched_at"),
    )
