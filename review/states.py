"""The review state machine: states, action kinds and the one table of allowed transitions.

The table is the single source of truth: the service enforces it in the UPDATE itself
(`... WHERE status IN (allowed) RETURNING`), the schema's CHECK constraints echo it, and the
README's state diagram is generated from it (`lookfirst review diagram`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ItemStatus(enum.StrEnum):
    PENDING = "pending"  # waiting in its queue for a reviewer
    CLAIMED = "claimed"  # leased to one reviewer until lease_expires_at
    AWAITING_SECOND = "awaiting_second"  # one verdict in; a second, different person must decide
    AWAITING_CONTEXT = "awaiting_context"  # a reviewer asked for the user's context
    DECIDED = "decided"  # resolved: verdict(s) recorded and agreed, actions proposed/approved
    ESCALATED = "escalated"  # two reviewers disagreed; a senior item took it over


class ItemKind(enum.StrEnum):
    INITIAL = "initial"  # routed here by the policy at scoring time
    QA = "qa"  # sampled below threshold for quality control; never leads to enforcement
    APPEAL = "appeal"  # the user asked for another look
    ESCALATION = "escalation"  # two reviewers disagreed
    CONTEXT = "context"  # the user's reply to a notice, before the action executes


class Verdict(enum.StrEnum):
    VIOLATING = "violating"  # breaks the policy in the named categories
    BENIGN = "benign"  # no violation
    BENIGN_MEDICAL = "benign_medical"  # no violation: medical context (a rash sent to a doctor)
    NEED_MORE_CONTEXT = "need_more_context"  # cannot decide without the user's context


class ActionStatus(enum.StrEnum):
    PROPOSED = "proposed"  # suggested; waits for the human approval(s) it needs
    APPROVED = "approved"  # approved by the people it needs; waits for notice or execution
    NOTIFIED = "notified"  # the user was told; waits for the notice period or their reply
    EXECUTED = "executed"  # handed to the platform through the outbox
    CANCELLED = "cancelled"  # withdrawn before execution
    REVERSED = "reversed"  # undone by its reversal action


class ActionKind(enum.StrEnum):
    HOLD_CONTENT = "hold_content"  # hide from others pending review (the only automated action)
    RESTORE_CONTENT = "restore_content"
    REMOVE_CONTENT = "remove_content"
    WARN = "warn"
    RETRACT_WARNING = "retract_warning"
    RESTRICT = "restrict"
    LIFT_RESTRICTION = "lift_restriction"
    SUSPEND = "suspend"
    LIFT_SUSPENSION = "lift_suspension"
    TERMINATE = "terminate"
    REINSTATE = "reinstate"
    DELETE_DATA = "delete_data"
    REPORT = "report"  # report to an authority
    RETRACT_REPORT = "retract_report"


CONTENT_ACTIONS = frozenset(
    {ActionKind.HOLD_CONTENT, ActionKind.RESTORE_CONTENT, ActionKind.REMOVE_CONTENT}
)
ACCOUNT_ACTIONS = frozenset(set(ActionKind) - CONTENT_ACTIONS)
#: need two distinct reviewers who agree (invariant 2)
IRREVERSIBLE_ACTIONS = frozenset({ActionKind.TERMINATE, ActionKind.DELETE_DATA, ActionKind.REPORT})
#: the only action that may be taken without a person (invariant 1)
AUTOMATED_ACTIONS = frozenset({ActionKind.HOLD_CONTENT})
#: waits for the appeal window before it executes; the account is suspended meanwhile
AFTER_APPEAL_WINDOW = frozenset({ActionKind.TERMINATE, ActionKind.DELETE_DATA})
#: how each action is undone; delete_data has none, which is why it waits for the window
REVERSAL: dict[ActionKind, ActionKind] = {
    ActionKind.HOLD_CONTENT: ActionKind.RESTORE_CONTENT,
    ActionKind.REMOVE_CONTENT: ActionKind.RESTORE_CONTENT,
    ActionKind.WARN: ActionKind.RETRACT_WARNING,
    ActionKind.RESTRICT: ActionKind.LIFT_RESTRICTION,
    ActionKind.SUSPEND: ActionKind.LIFT_SUSPENSION,
    ActionKind.TERMINATE: ActionKind.REINSTATE,
    ActionKind.REPORT: ActionKind.RETRACT_REPORT,
}
#: the reversals themselves: restorative, approved by the person who overturned the decision
REVERSAL_KINDS = frozenset(REVERSAL.values())


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    sources: frozenset[str]
    target: str
    doc: str


def _t(name: str, sources: set[str], target: str, doc: str) -> Transition:
    return Transition(name, frozenset(sources), target, doc)


S, A = ItemStatus, ActionStatus

#: every allowed review-item transition; anything else is refused
ITEM_TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in [
        _t("claim", {S.PENDING, S.AWAITING_SECOND}, S.CLAIMED, "a reviewer takes a lease"),
        _t("release_first", {S.CLAIMED}, S.PENDING, "lease released or expired, no verdict yet"),
        _t("release_second", {S.CLAIMED}, S.AWAITING_SECOND, "lease ends after one verdict"),
        _t("decide", {S.CLAIMED}, S.DECIDED, "the verdict(s) needed are in and agree"),
        _t("await_second", {S.CLAIMED}, S.AWAITING_SECOND, "first of two verdicts recorded"),
        _t("ask_context", {S.CLAIMED}, S.AWAITING_CONTEXT, "reviewer needs the user's context"),
        _t("escalate", {S.CLAIMED}, S.ESCALATED, "two reviewers disagreed"),
        _t("context_received", {S.AWAITING_CONTEXT}, S.PENDING, "the user's context arrived"),
    ]
}

#: every allowed action transition
ACTION_TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in [
        _t("approve", {A.PROPOSED}, A.APPROVED, "the human approval(s) it needs are recorded"),
        _t("notify", {A.APPROVED}, A.NOTIFIED, "notice sent; the user may reply"),
        _t("execute", {A.APPROVED, A.NOTIFIED}, A.EXECUTED, "handed to the platform"),
        _t("cancel", {A.PROPOSED, A.APPROVED, A.NOTIFIED}, A.CANCELLED, "withdrawn"),
        _t("reverse", {A.EXECUTED}, A.REVERSED, "undone by its reversal"),
    ]
}

OPEN_ITEM_STATUSES = frozenset({S.PENDING, S.CLAIMED, S.AWAITING_SECOND, S.AWAITING_CONTEXT})
CLOSED_ITEM_STATUSES = frozenset({S.DECIDED, S.ESCALATED})
CLAIMABLE = ITEM_TRANSITIONS["claim"].sources


def mermaid_diagram() -> str:
    """The state diagrams as Mermaid, generated from the tables so they cannot drift."""
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> pending"]
    for t in ITEM_TRANSITIONS.values():
        for s in sorted(t.sources):
            lines.append(f"    {s} --> {t.target}: {t.name}")
    lines += ["    decided --> [*]", "    escalated --> [*]", "```", "", "```mermaid",
              "stateDiagram-v2", "    [*] --> proposed"]
    for t in ACTION_TRANSITIONS.values():
        for s in sorted(t.sources):
            lines.append(f"    {s} --> {t.target}: {t.name}")
    lines += ["    executed --> [*]", "    cancelled --> [*]", "    reversed --> [*]", "```"]
    return "\n".join(lines)


def sql_in(values: frozenset[str] | set[str]) -> str:
    """A SQL IN-list literal for CHECK constraints (values are our own enum members)."""
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"
