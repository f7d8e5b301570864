"""The system of record for human review: schema, state machine, queue, verdicts, actions,
outbox, the hash-chained audit log and the Label Studio sync's records.  Knows nothing of
models or HTTP routing.

This module is review's public interface: `pipeline` imports from here, never from the
submodules (`make lint` holds it to that: the import-linter contracts in pyproject.toml)."""

from __future__ import annotations

from review.apikeys import (
    ApiKeyRecord,
    add_api_key,
    find_api_key,
    get_api_key,
    list_api_keys,
    reviewer_is_active,
    revoke_api_key,
    take_rate_token,
)
from review.audit import ChainReport as AuditReport
from review.audit import append as append_audit_event
from review.audit import verify as verify_audit_log
from review.banks import (
    BANKS,
    BadBankEntry,
    BankEntryNotFound,
    NoUsablePdq,
    content_without_pdq,
    set_content_pdq,
)
from review.banks import NewEntry as NewBankEntry
from review.banks import add as add_to_bank
from review.banks import changes_since as bank_changes_since
from review.banks import cluster_items as bank_cluster
from review.banks import cluster_sizes as bank_cluster_sizes
from review.banks import current_seq as bank_current_seq
from review.banks import import_entries as import_bank_entries
from review.banks import import_hashes as import_bank_hashes
from review.banks import judge_match as judge_bank_match
from review.banks import list_entries as list_bank_entries
from review.banks import lookup as bank_lookup
from review.banks import lookup_many as bank_lookup_many
from review.banks import lookup_sha256 as bank_lookup_sha256
from review.banks import record_matches as record_bank_matches
from review.banks import remove as remove_bank_entry
from review.banks import set_state as set_bank_entry_state
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
    FreshEyesRequired,
    InvalidTransition,
    NoQueues,
    NotClaimant,
    NotEntitled,
    NotFound,
    NothingToClaim,
    ReviewError,
    SameCredential,
    UnknownQueue,
    UnknownReviewer,
)
from review.idempotency import (
    StoredResponse,
    delete_stored_response,
    find_stored_response,
    save_stored_response,
)
from review.labelstudio import CLOSE_TOPIC as LABELSTUDIO_CLOSE_TOPIC
from review.labelstudio import TASK_TOPIC as LABELSTUDIO_TASK_TOPIC
from review.labelstudio import JudgedAnnotation as LabelStudioJudgedAnnotation
from review.labelstudio import ProjectRecord as LabelStudioProjectRecord
from review.labelstudio import SyncStatus as LabelStudioSyncStatus
from review.labelstudio import annotation_judged as labelstudio_annotation_judged
from review.labelstudio import enqueue_closures as enqueue_labelstudio_closures
from review.labelstudio import enqueue_tasks as enqueue_labelstudio_tasks
from review.labelstudio import judged_annotation as labelstudio_judged_annotation
from review.labelstudio import map_reviewer as map_labelstudio_reviewer
from review.labelstudio import projects as labelstudio_projects
from review.labelstudio import record_annotation as record_labelstudio_annotation
from review.labelstudio import record_annotation_edit as record_labelstudio_annotation_edit
from review.labelstudio import record_tasks as record_labelstudio_tasks
from review.labelstudio import reviewer_for_email as labelstudio_reviewer_for_email
from review.labelstudio import reviewer_for_user as labelstudio_reviewer_for_user
from review.labelstudio import save_project as save_labelstudio_project
from review.labelstudio import save_state as save_labelstudio_sync_state
from review.labelstudio import status as labelstudio_sync_status
from review.labelstudio import sync_state as labelstudio_sync_state
from review.labelstudio import task_item as labelstudio_task_item
from review.learning import (
    FlaggedDecided,
    ReviewedDecision,
    ReviewedItem,
    ReviewedVerdict,
    TrafficDecision,
    flagged_decided,
    iter_traffic,
    reviewed_decisions,
)
from review.outbox import (
    DELIVERED,
    Delivered,
    DeliveryPolicy,
    DeliveryReport,
    OutboxWorker,
    SinkResult,
)
from review.outbox import Failed as DeliveryFailed
from review.outbox import Message as OutboxMessage
from review.outbox import Sink as OutboxSink
from review.outbox import backlog as outbox_backlog
from review.outbox import list_rows as list_outbox
from review.outbox import requeue_dead as requeue_dead_outbox
from review.records import (
    AccountHistory,
    AppealRecord,
    DecisionRecord,
    ItemState,
    account_history,
    content_mime,
    get_appeal,
    get_decision,
    get_decisions,
    human_resolutions,
    item_content,
    item_state,
    iter_decisions,
    verdict_credentials,
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
    "BankEntryNotFound",
    "NoUsablePdq",
    "ExposureCapReached",
    "FreshEyesRequired",
    "InvalidTransition",
    "NoQueues",
    "NotClaimant",
    "NotEntitled",
    "NotFound",
    "NothingToClaim",
    "ReviewError",
    "SameCredential",
    "UnknownQueue",
    "UnknownReviewer",
    # the audit log
    "AuditReport",
    "append_audit_event",
    "verify_audit_log",
    # hash banks
    "BANKS",
    "NewBankEntry",
    "add_to_bank",
    "bank_changes_since",
    "bank_cluster",
    "bank_cluster_sizes",
    "content_without_pdq",
    "set_content_pdq",
    "bank_current_seq",
    "bank_lookup_sha256",
    "import_bank_entries",
    "judge_bank_match",
    "record_bank_matches",
    "remove_bank_entry",
    "set_bank_entry_state",
    "bank_lookup",
    "bank_lookup_many",
    "import_bank_hashes",
    "list_bank_entries",
    # the outbox and its sinks
    "DELIVERED",
    "Delivered",
    "DeliveryFailed",
    "DeliveryPolicy",
    "DeliveryReport",
    "OutboxMessage",
    "OutboxSink",
    "OutboxWorker",
    "SinkResult",
    "list_outbox",
    "outbox_backlog",
    "requeue_dead_outbox",
    # the Label Studio sync's records (never commit)
    "LABELSTUDIO_CLOSE_TOPIC",
    "LABELSTUDIO_TASK_TOPIC",
    "LabelStudioJudgedAnnotation",
    "enqueue_labelstudio_closures",
    "labelstudio_judged_annotation",
    "labelstudio_sync_state",
    "record_labelstudio_annotation_edit",
    "LabelStudioProjectRecord",
    "LabelStudioSyncStatus",
    "enqueue_labelstudio_tasks",
    "labelstudio_annotation_judged",
    "labelstudio_projects",
    "labelstudio_reviewer_for_email",
    "labelstudio_reviewer_for_user",
    "labelstudio_sync_status",
    "labelstudio_task_item",
    "map_labelstudio_reviewer",
    "record_labelstudio_annotation",
    "record_labelstudio_tasks",
    "save_labelstudio_project",
    "save_labelstudio_sync_state",
    # repositories for the pipeline (never commit)
    "AccountHistory",
    "ApiKeyRecord",
    "AppealRecord",
    "DecisionRecord",
    "ItemState",
    "StoredResponse",
    "account_history",
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
    "item_state",
    "iter_decisions",
    "verdict_credentials",
    "list_api_keys",
    "revoke_api_key",
    "reviewer_is_active",
    "save_stored_response",
    "take_rate_token",
    # the learning loop's reads (datasets, model comparison, the false-positive rate)
    "FlaggedDecided",
    "ReviewedDecision",
    "ReviewedItem",
    "ReviewedVerdict",
    "TrafficDecision",
    "flagged_decided",
    "iter_traffic",
    "reviewed_decisions",
]
