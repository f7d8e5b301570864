"""The system of record for human review: schema, state machine, queue, verdicts, actions,
outbox and the hash-chained audit log.  Knows nothing of models or HTTP routing.

This module is review's public interface: `pipeline` imports from here, never from the
submodules (tests/unit/test_package_imports.py holds it to that)."""

from __future__ import annotations

from review.apikeys import (
    ApiKeyRecord,
    add_api_key,
    find_api_key,
    get_api_key,
    list_api_keys,
    revoke_api_key,
    take_rate_token,
)
from review.audit import ChainReport as AuditReport
from review.audit import append as append_audit_event
from review.audit import verify as verify_audit_log
from review.banks import BANKS, BadBankEntry
from review.banks import add as add_to_bank
from review.banks import import_hashes as import_bank_hashes
from review.banks import list_entries as list_bank_entries
from review.banks import lookup as bank_lookup
from review.banks import lookup_many as bank_lookup_many
from review.claims import MAX_CLAIM_BATCH, ClaimDesk
from review.config import QueueRules, ReviewConfig
from review.db import Database, current_revision
from review.errors import (
    ActionNotApproved,
    ActionNotDue,
    AlreadyDecided,
    AppealNotAllowed,
    AuditChainBroken,
    ExposureCapReached,
    InvalidTransition,
    NotClaimant,
    NotEntitled,
    NotFound,
    NothingToClaim,
    ReviewError,
    UnknownReviewer,
)
from review.idempotency import (
    StoredResponse,
    delete_stored_response,
    find_stored_response,
    save_stored_response,
)
from review.outbox import DeliveryPolicy, DeliveryReport, OutboxWorker
from review.outbox import backlog as outbox_backlog
from review.outbox import list_rows as list_outbox
from review.outbox import requeue_dead as requeue_dead_outbox
from review.records import (
    AppealRecord,
    DecisionRecord,
    content_mime,
    get_appeal,
    get_decision,
    get_decisions,
    human_resolutions,
    item_content,
    iter_decisions,
)
from review.service import SYSTEM, ReviewService, utcnow
from review.states import (
    ACTION_TRANSITIONS,
    CLOSED_ITEM_STATUSES,
    IRREVERSIBLE_ACTIONS,
    ITEM_TRANSITIONS,
    OPEN_ITEM_STATUSES,
    REVERSAL_KINDS,
    ActionKind,
    ActionStatus,
    ItemKind,
    ItemStatus,
    Verdict,
    mermaid_diagram,
)
from review.values import DecideResult, ItemView, NewUpload, Recorded, Routing

__all__ = [
    # the service and its configuration
    "ClaimDesk",
    "Database",
    "MAX_CLAIM_BATCH",
    "QueueRules",
    "ReviewConfig",
    "ReviewService",
    "SYSTEM",
    "current_revision",
    "utcnow",
    # values in and out
    "DecideResult",
    "ItemView",
    "NewUpload",
    "Recorded",
    "Routing",
    # the state machine
    "ACTION_TRANSITIONS",
    "CLOSED_ITEM_STATUSES",
    "IRREVERSIBLE_ACTIONS",
    "ITEM_TRANSITIONS",
    "OPEN_ITEM_STATUSES",
    "REVERSAL_KINDS",
    "ActionKind",
    "ActionStatus",
    "ItemKind",
    "ItemStatus",
    "Verdict",
    "mermaid_diagram",
    # errors
    "ActionNotApproved",
    "ActionNotDue",
    "AlreadyDecided",
    "AppealNotAllowed",
    "AuditChainBroken",
    "BadBankEntry",
    "ExposureCapReached",
    "InvalidTransition",
    "NotClaimant",
    "NotEntitled",
    "NotFound",
    "NothingToClaim",
    "ReviewError",
    "UnknownReviewer",
    # the audit log
    "AuditReport",
    "append_audit_event",
    "verify_audit_log",
    # hash banks
    "BANKS",
    "add_to_bank",
    "bank_lookup",
    "bank_lookup_many",
    "import_bank_hashes",
    "list_bank_entries",
    # the outbox
    "DeliveryPolicy",
    "DeliveryReport",
    "OutboxWorker",
    "list_outbox",
    "outbox_backlog",
    "requeue_dead_outbox",
    # repositories for the pipeline (never commit)
    "ApiKeyRecord",
    "AppealRecord",
    "DecisionRecord",
    "StoredResponse",
    "add_api_key",
    "content_mime",
    "delete_stored_response",
    "find_api_key",
    "find_stored_response",
    "get_api_key",
    "get_appeal",
    "get_decision",
    "get_decisions",
    "human_resolutions",
    "item_content",
    "iter_decisions",
    "list_api_keys",
    "revoke_api_key",
    "save_stored_response",
    "take_rate_token",
]
