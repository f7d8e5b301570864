"""The parts of a validated policy (queues, categories, thresholds, context modifiers), the
`Policy` itself and the `PolicyDecision` it reaches for one upload."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import PolicyError
from pipeline.policy.context import Context
from review import Verdict

#: severities in rising order; the order is what "worst" and `two_person_severity` mean
SEVERITIES: tuple[str, ...] = ("none", "low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

#: what a hash-bank lookup can report (DESIGN.md, "Words": bank)
BANK_MATCHES = frozenset({"violating", "cleared_benign"})

Outcome = Literal["allow", "hold", "review"]


# ---- the policy's parts -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue people work in."""

    name: str
    sla: datetime.timedelta
    role: str | None
    reviewers_required: int
    exposure_cap: int | None
    exposure_window: datetime.timedelta | None
    escalate_to: str | None
    description: str


@dataclass(frozen=True, slots=True)
class Thresholds:
    review: float
    #: None: this category never holds content automatically
    hold: float | None


@dataclass(frozen=True, slots=True)
class CategorySpec:
    name: str
    severity: str
    description: str
    thresholds: Thresholds
    qa_sample_rate: float
    queue: str


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda v, x: v == x,
    "in": lambda v, x: v in x,
    "lt": lambda v, x: v is not None and v < x,
    "lte": lambda v, x: v is not None and v <= x,
    "gt": lambda v, x: v is not None and v > x,
    "gte": lambda v, x: v is not None and v >= x,
}


@dataclass(frozen=True, slots=True)
class Modifier:
    """A context rule: when one context field matches, move thresholds and/or change routing."""

    name: str
    field: str
    #: (operator, operand) pairs, all of which must hold; a bare value in YAML is ("eq", value)
    conditions: tuple[tuple[str, Any], ...]
    review_delta: float
    hold_delta: float
    disable_hold: bool
    route_to: str | None
    priority_delta: int
    note: str

    def matches(self, context: Context) -> bool:
        # Operands were type-checked against the field on load, so `eq: 1` can never be
        # compared with a boolean field (where Python would call 1 == True a match).
        value = getattr(context, self.field)
        return all(_OPS[op](value, x) for op, x in self.conditions)


@dataclass(frozen=True, slots=True)
class BankRules:
    """What a cleared-benign bank match does (the `banks` section): `cleared_match` "allow"
    (not flagged again) or "sample" (allowed, and a share `cleared_sample_rate` of them drawn
    into the QA queue at low priority); `clearance_scope` "account" (a clearance a reviewer's
    verdict made applies to that account's uploads only) or "global"."""

    cleared_match: str = "allow"
    cleared_sample_rate: float = 0.0
    clearance_scope: str = "account"


@dataclass(frozen=True, slots=True)
class PromotionRules:
    """What `lookfirst models promote` protects: a candidate model whose false-positive rate
    (benign uploads it would flag) on a protected context segment is worse than the active
    model's by more than `fpr_tolerance` is refused unless forced with a reason."""

    #: (context field, value) pairs, each one segment: medically shared uploads by default
    protected_segments: tuple[tuple[str, Any], ...] = (("medical_sharing", True),)
    #: how much worse (absolute, as a share of benign uploads) still passes
    fpr_tolerance: float = 0.02

    @property
    def segment_names(self) -> tuple[str, ...]:
        """`field=value` as the evaluation and the comparison name segments."""
        return tuple(segment_name(f, v) for f, v in self.protected_segments)


def segment_name(field: str, value: Any) -> str:
    """One context segment's name: `medical_sharing=true`, `audience=public`."""
    text = ("true" if value else "false") if isinstance(value, bool) else (
        "null" if value is None else str(value))
    return f"{field}={text}"


# ---- the decision -------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyDecision:
    """What the policy concluded for one upload, with its statement of reasons."""

    outcome: Outcome
    #: None only for a plain allow (a QA-sampled allow goes to the QA queue)
    queue: str | None
    #: of the worst category that fired; "none" when nothing fired
    severity: str
    #: higher = sooner
    priority: int
    reviewers_required: int
    #: what a reviewer may approve on a `violating` verdict; empty for allow and QA.  Never
    #: `hold_content`: a hold is the outcome itself.
    proposed_actions: tuple[str, ...]
    #: allowed, but sampled into the QA queue; a QA item never leads to enforcement
    qa_sample: bool
    categories: tuple[str, ...]
    reasons: dict[str, Any] = field(default_factory=dict)


def qa_draw(version: str, category: str, content_sha256: str) -> float:
    """A uniform number in [0, 1) fixed by policy version, category and content.

    Deterministic so a replay (or a retry) samples exactly what the first run sampled.
    """
    digest = hashlib.sha256(f"{version}:{category}:{content_sha256}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


# ---- the policy ---------------------------------------------------------------------------
# eq=False: identity hashing, so a policy can key a cache; compare versions by `digest`.
@dataclass(frozen=True, eq=False)
class Policy:
    """A validated policy.  Build it with `load_policy` or `policy_from_text`."""

    name: str
    version: str
    description: str
    categories: Mapping[str, CategorySpec]
    queues: Mapping[str, QueueSpec]
    modifiers: tuple[Modifier, ...]
    severity_priority: Mapping[str, int]
    qa_queue: str
    appeals_queue: str
    escalation_queue: str
    #: where a known-violating hash-bank match goes (special_queues.bank_match)
    bank_match_queue: str
    urgent_actions: frozenset[str]
    two_person_severity: str | None
    actions_by_severity: Mapping[str, tuple[str, ...]]
    verdict_actions: Mapping[str, tuple[str, ...]]
    #: where the text came from, and the sha256 of the text: the version is what the author
    #: claims, the digest is what was actually in force
    source: str
    digest: str
    #: what model promotion protects (the `promotion` section; medical sharing by default)
    promotion: PromotionRules = field(default_factory=PromotionRules)
    #: what a cleared-benign bank match does, and whose uploads a clearance covers
    banks: BankRules = field(default_factory=BankRules)

    def queue_for(self, name: str) -> QueueSpec:
        try:
            return self.queues[name]
        except KeyError:
            raise PolicyError(
                f"policy {self.name} {self.version}: unknown queue {name!r}"
            ) from None

    def actions_for_verdict(self, verdict: str, categories: Sequence[str]) -> tuple[str, ...]:
        """The actions a verdict proposes (a person approves each before anything happens)."""
        if verdict == Verdict.VIOLATING:
            if not categories:
                raise PolicyError("a violating verdict must name at least one category")
            unknown = [c for c in categories if c not in self.categories]
            if unknown:
                raise PolicyError(
                    f"policy {self.name} {self.version}: unknown categories {', '.join(unknown)}"
                )
            worst = max((self.categories[c].severity for c in categories),
                        key=SEVERITY_RANK.__getitem__)
            return self.actions_by_severity.get(worst, ())
        try:
            return self.verdict_actions[verdict]
        except KeyError:
            raise PolicyError(
                f"unknown verdict {verdict!r} (known: {', '.join(v.value for v in Verdict)})"
            ) from None

    def evaluate(
        self,
        scores: Mapping[str, float],
        context: Context,
        *,
        content_sha256: str,
        bank_match: str | None = None,
    ) -> PolicyDecision:
        """Scores + context (+ a hash-bank match) → outcome, queue, priority and reasons."""
        # imported here: the engine builds on this module's types
        from pipeline.policy.evaluate import evaluate

        return evaluate(self, scores, context, content_sha256=content_sha256,
                        bank_match=bank_match)
