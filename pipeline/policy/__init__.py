"""The policy engine: the versioned YAML policy, its validation, and scores + context → decision.

A policy names categories with severities and thresholds, the queues people work in, the
context modifiers that move thresholds or change routing, and the actions a reviewer's verdict
proposes.  `Policy.evaluate` is pure: the same scores, context, content and policy version give
the same decision, and every decision carries a JSON statement of its reasons (invariant 3).
Nothing here acts on an account: the only automated outcomes are allow, a content hold and
review (invariant 1); `proposed_actions` are suggestions a person must approve.

Modules: `context` (what the uploader told us), `model` (the policy's parts, `Policy`,
`PolicyDecision`), `evaluate` (the engine), `load` (YAML, validated with line numbers).
"""

from __future__ import annotations

from pipeline.policy.context import Context
from pipeline.policy.load import POLICIES_DIR, bundled_policy, load_policy, policy_from_text
from pipeline.policy.model import (
    BANK_MATCHES,
    SEVERITIES,
    BankRules,
    CategorySpec,
    Modifier,
    Policy,
    PolicyDecision,
    PromotionRules,
    QueueSpec,
    Thresholds,
    qa_draw,
    segment_name,
)

__all__ = [
    "BANK_MATCHES",
    "POLICIES_DIR",
    "SEVERITIES",
    "CategorySpec",
    "Context",
    "Modifier",
    "Policy",
    "PolicyDecision",
    "BankRules",
    "PromotionRules",
    "QueueSpec",
    "Thresholds",
    "bundled_policy",
    "load_policy",
    "policy_from_text",
    "qa_draw",
    "segment_name",
]
