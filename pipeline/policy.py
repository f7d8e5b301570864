"""The policy engine: the versioned YAML policy, its validation, and scores + context → decision.

A policy names categories with severities and thresholds, the queues people work in, the
context modifiers that move thresholds or change routing, and the actions a reviewer's verdict
proposes.  `Policy.evaluate` is pure: the same scores, context, content and policy version give
the same decision, and every decision carries a JSON statement of its reasons (invariant 3).
Nothing here acts on an account: the only automated outcomes are allow, a content hold and
review (invariant 1); `proposed_actions` are suggestions a person must approve.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import numbers
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import PolicyError, UnknownContextField
from review.states import REVERSAL_KINDS, ActionKind, Verdict

__all__ = [
    "BANK_MATCHES",
    "POLICIES_DIR",
    "SEVERITIES",
    "CategorySpec",
    "Context",
    "Modifier",
    "Policy",
    "PolicyDecision",
    "QueueSpec",
    "Thresholds",
    "bundled_policy",
    "load_policy",
    "policy_from_text",
    "qa_draw",
]

#: the policies that ship with the package (`default`, and `demo` for the bundled samples)
POLICIES_DIR = Path(__file__).resolve().parent / "policies"

#: severities in rising order; the order is what "worst" and `two_person_severity` mean
SEVERITIES: tuple[str, ...] = ("none", "low", "medium", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

#: what a hash-bank lookup can report (DESIGN.md, "Words": bank)
BANK_MATCHES = frozenset({"violating", "cleared_benign"})

Outcome = Literal["allow", "hold", "review"]
_OUTCOME_RANK: dict[str, int] = {"allow": 0, "review": 1, "hold": 2}
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---- context ------------------------------------------------------------------------------
class Context(BaseModel):
    """What the uploader told us about an upload; modifiers in the policy match on these."""

    # strict: a context moves thresholds, so "1" must not quietly become True through the API.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    medical_sharing: bool = False
    recipient_verified_provider: bool = False
    audience: Literal["private", "direct", "followers", "public"] = "private"
    account_age_days: int | None = Field(default=None, ge=0)
    prior_strikes: int = Field(default=0, ge=0)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Context:
        """Validate a mapping (an API body); errors are `UnknownContextField` naming the field."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise UnknownContextField(_context_error_detail(exc)) from None

    @classmethod
    def from_pairs(cls, pairs: Sequence[str]) -> Context:
        """Parse CLI `key=value` strings (`medical_sharing=yes`, `account_age_days=3`)."""
        values: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not key:
                raise UnknownContextField(f"context {pair!r}: expected key=value")
            spec = _CONTEXT_FIELDS.get(key)
            if spec is None:
                raise UnknownContextField(_unknown_field_detail(key))
            if key in values:
                raise UnknownContextField(f"context field {key!r}: given more than once")
            values[key] = spec.from_text(key, raw)
        return cls.parse(values)


def _unknown_field_detail(key: str) -> str:
    return f"unknown context field {key!r} (known: {', '.join(_CONTEXT_FIELDS)})"


def _context_error_detail(exc: ValidationError) -> str:
    details = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "context"
        if err["type"] == "extra_forbidden":
            details.append(_unknown_field_detail(name))
        else:
            details.append(f"context field {name!r}: {err['msg']}")
    return "; ".join(details)


_FieldKind = Literal["bool", "int", "optional_int", "choice"]
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_NULL = frozenset({"", "none", "null"})


@dataclass(frozen=True, slots=True)
class _ContextField:
    kind: _FieldKind
    choices: tuple[str, ...] = ()

    def from_text(self, key: str, raw: str) -> object:
        text = raw.lower()
        if self.kind == "bool":
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise UnknownContextField(
                f"context field {key!r}: {raw!r} is not a boolean (true/false/1/0/yes/no)"
            )
        if self.kind == "choice":
            return raw  # the model's Literal names the choices when it refuses one
        if self.kind == "optional_int" and text in _NULL:
            return None
        try:
            return int(raw)
        except ValueError:
            raise UnknownContextField(
                f"context field {key!r}: {raw!r} is not a whole number"
            ) from None

    def accepts(self, value: object) -> bool:
        """Whether a policy's `when` operand has this field's type."""
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if value is None:
            return self.kind == "optional_int"
        return isinstance(value, int) and not isinstance(value, bool)


def _field_kind(annotation: object) -> _ContextField:
    if annotation is bool:
        return _ContextField("bool")
    if annotation is int:
        return _ContextField("int")
    if get_origin(annotation) is Literal:
        return _ContextField("choice", tuple(str(a) for a in get_args(annotation)))
    if set(get_args(annotation)) == {int, type(None)}:
        return _ContextField("optional_int")
    raise TypeError(f"no policy kind for context annotation {annotation!r}")  # pragma: no cover


#: derived from the model so a new Context field is usable in policies (or fails loudly here)
_CONTEXT_FIELDS: dict[str, _ContextField] = {
    name: _field_kind(info.annotation) for name, info in Context.model_fields.items()
}


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


def _r(x: float) -> float:
    return round(x, 4)


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
            worst = max((self.categories[c].severity for c in categories), key=_RANK.__getitem__)
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
        content_sha256 = content_sha256.lower()
        if not _SHA256.fullmatch(content_sha256):
            raise ValueError("content_sha256 must be 64 hexadecimal characters")
        if bank_match is not None and bank_match not in BANK_MATCHES:
            raise ValueError(f"bank_match must be one of {sorted(BANK_MATCHES)} or None")
        clean: dict[str, float] = {}
        for key, value in scores.items():
            # A NaN would compare false against every threshold and quietly allow.
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"score for {key!r} is not a number")
            if not (0.0 <= float(value) <= 1.0):  # also refuses NaN
                raise ValueError(f"score for {key!r} is {value!r}, outside [0, 1]")
            clean[key] = float(value)

        matched = [m for m in self.modifiers if m.matches(context)]
        ev = _Evaluation(self, clean, matched)
        routing: list[str] = []

        fired = ev.fired()
        hold = any(ev.hold_fired[c] for c in fired)
        suppressed: list[str] = []
        outcome: Outcome
        queue: str | None
        if bank_match == "violating":
            outcome = "hold" if hold else "review"
            severity = "critical"
            queue = self.bank_match_queue
            proposed = self.actions_by_severity.get("critical", ())
            routing.append(
                f"bank match 'violating': known violating content, routed to queue {queue!r} "
                "at top priority whatever the scores"
            )
            for m in matched:
                if m.route_to is not None:
                    routing.append(f"{m.name}: route to {m.route_to!r} overridden by bank match")
        else:
            if bank_match == "cleared_benign":
                critical = [
                    c for c in fired
                    if self.categories[c].severity == "critical" and ev.hold_would_fire[c]
                ]
                if critical:
                    routing.append(
                        "bank match 'cleared_benign' noted, but the score is above the hold "
                        f"threshold of critical {', '.join(critical)}: review, not hold"
                    )
                    hold = False
                else:
                    suppressed, fired, hold = fired, [], False
                    routing.append(
                        "bank match 'cleared_benign': a person already cleared this content; "
                        "not flagged again"
                    )
            outcome = "hold" if hold else ("review" if fired else "allow")
            severity = ev.worst_severity(fired)
            queue = self._route(ev, fired, matched, routing) if fired else None
            proposed = self.actions_for_verdict(Verdict.VIOLATING, fired) if fired else ()

        disablers = [m.name for m in matched if m.disable_hold]
        if disablers and bank_match != "cleared_benign":
            for c, would in ev.hold_would_fire.items():
                if would:
                    routing.append(
                        f"{c}: score {_r(ev.scores[c])} reaches the hold threshold "
                        f"{_r(ev.hold[c] or 0.0)}, but {', '.join(disablers)} disables the "
                        "automatic hold: a person decides first"
                    )

        qa_sample = False
        qa_draws: list[dict[str, Any]] = []
        if outcome == "allow" and bank_match is None:
            for cat in self.categories.values():
                if cat.qa_sample_rate > 0:
                    draw = qa_draw(self.version, cat.name, content_sha256)
                    hit = draw < cat.qa_sample_rate
                    qa_draws.append(
                        {"category": cat.name, "rate": cat.qa_sample_rate,
                         "draw": round(draw, 6), "sampled": hit}
                    )
                    qa_sample = qa_sample or hit
            if qa_sample:
                queue = self.qa_queue
                routing.append(f"sampled for quality control into queue {queue!r}; no enforcement")

        if outcome == "allow":
            # QA items are routine work; risk-based priority deltas are for flagged content.
            priority = self.severity_priority["none"]
        else:
            priority = self.severity_priority[severity] + sum(m.priority_delta for m in matched)
        reviewers = self.queues[queue].reviewers_required if queue is not None else 0
        categories = tuple(fired)
        unscored = sorted(k for k in clean if k not in self.categories)
        missing = [c for c in self.categories if c not in clean]

        reasons: dict[str, Any] = {
            "policy": {"name": self.name, "version": self.version, "digest": self.digest},
            "outcome": outcome,
            "queue": queue,
            "severity": severity,
            "priority": priority,
            "reviewers_required": reviewers,
            "categories": list(categories),
            "proposed_actions": list(proposed),
            "context": context.model_dump(mode="json"),
            "modifiers_applied": [
                {"modifier": m.name, "field": m.field, "value": getattr(context, m.field),
                 "threshold_delta": {"review": m.review_delta, "hold": m.hold_delta},
                 "disable_hold": m.disable_hold, "route_to": m.route_to,
                 "priority_delta": m.priority_delta, "note": m.note}
                for m in matched
            ],
            "rules": ev.rules(context),
            "routing": routing,
            "qa_sample": qa_sample,
            "qa_draws": qa_draws,
            "bank_match": bank_match,
            "suppressed_by_cleared_match": suppressed,
            "unscored_by_policy": unscored,
            "missing_scores_counted_as_zero": missing,
        }
        return PolicyDecision(
            outcome=outcome,
            queue=queue,
            severity=severity,
            priority=priority,
            reviewers_required=reviewers,
            proposed_actions=proposed,
            qa_sample=qa_sample,
            categories=categories,
            reasons=reasons,
        )

    def _route(
        self, ev: _Evaluation, fired: list[str], matched: list[Modifier], routing: list[str]
    ) -> str:
        worst = max(fired, key=lambda c: (_RANK[self.categories[c].severity], ev.scores[c]))
        spec = self.categories[worst]
        queue = spec.queue
        routing.append(
            f"worst category {worst!r} ({spec.severity}, score {_r(ev.scores[worst])}) "
            f"-> queue {queue!r}"
        )
        # A protective context (one that disables the automatic hold, e.g. medical sharing)
        # routes before any other: a rash sent to a doctor must reach the medical queue even
        # when an account-history modifier also wants to route.  Load-time validation keeps
        # protective routes out of two-person queues; only a bank match sends such an item
        # to one (DESIGN.md, "Policy").
        routers = [m for m in matched if m.route_to and m.disable_hold] or [
            m for m in matched if m.route_to
        ]
        for i, m in enumerate(routers):
            assert m.route_to is not None
            current = self.queues[queue].reviewers_required
            if i > 0:
                routing.append(
                    f"{m.name}: route to {m.route_to!r} not used; {routers[0].name} comes first"
                )
            elif not m.disable_hold and self.queues[m.route_to].reviewers_required < current:
                # Account history may reprioritise work, never take severe content away from
                # the second reviewer its own queue requires.
                routing.append(
                    f"{m.name}: route to {m.route_to!r} not used; {queue!r} needs "
                    f"{current} reviewers"
                )
            else:
                if current > 1 and m.disable_hold:
                    routing.append(
                        f"{m.name}: kept out of two-person queue {queue!r} (no bank match)"
                    )
                queue = m.route_to
                note = f"{m.name}: routed to queue {queue!r}"
                if m.disable_hold:
                    note += "; automatic hold disabled"
                routing.append(note)
        return queue


class _Evaluation:
    """Thresholds in force for one evaluation, per category, and which rules fired."""

    def __init__(self, policy: Policy, scores: Mapping[str, float], matched: list[Modifier]):
        self.policy = policy
        self.matched = matched
        self.scores = {c: scores.get(c, 0.0) for c in policy.categories}
        self.review: dict[str, float] = {}
        self.hold: dict[str, float | None] = {}
        self.review_fired: dict[str, bool] = {}
        self.hold_fired: dict[str, bool] = {}
        self.hold_would_fire: dict[str, bool] = {}
        disabled = any(m.disable_hold for m in matched)
        for name, cat in policy.categories.items():
            score = self.scores[name]
            review = _move(cat.thresholds.review, [m.review_delta for m in matched])
            self.review[name] = review
            self.review_fired[name] = _fires(score, review)
            if cat.thresholds.hold is None:
                self.hold[name] = None
                self.hold_would_fire[name] = False
            else:
                hold = _move(cat.thresholds.hold, [m.hold_delta for m in matched])
                self.hold[name] = hold
                self.hold_would_fire[name] = _fires(score, hold)
            self.hold_fired[name] = self.hold_would_fire[name] and not disabled

    def fired(self) -> list[str]:
        return [c for c in self.policy.categories if self.review_fired[c] or self.hold_fired[c]]

    def worst_severity(self, fired: Sequence[str]) -> str:
        sevs = [self.policy.categories[c].severity for c in fired]
        return max(sevs, key=_RANK.__getitem__) if sevs else "none"

    def rules(self, context: Context) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, cat in self.policy.categories.items():
            for kind in ("review", "hold"):
                base = cat.thresholds.review if kind == "review" else cat.thresholds.hold
                moved_by = []
                if base is not None:
                    for m in self.matched:
                        delta = m.review_delta if kind == "review" else m.hold_delta
                        if delta:
                            moved_by.append(
                                {"modifier": m.name, "field": m.field,
                                 "value": getattr(context, m.field), "delta": delta}
                            )
                threshold = self.review[name] if kind == "review" else self.hold[name]
                rule: dict[str, Any] = {
                    "rule": f"{name}.{kind}",
                    "category": name,
                    "severity": cat.severity,
                    "score": _r(self.scores[name]),
                    "base_threshold": base,
                    # exactly the number compared against (already rounded by _move)
                    "threshold": threshold,
                    "fired": self.review_fired[name] if kind == "review" else self.hold_fired[name],
                    "moved_by": moved_by,
                }
                if kind == "hold":
                    rule["disabled_by"] = (
                        [m.name for m in self.matched if m.disable_hold] if base is not None else []
                    )
                out.append(rule)
        return out


def _move(base: float, deltas: Sequence[float]) -> float:
    # Rounded so 0.45 + 0.15 is 0.6, not 0.6000000000000001: a score of exactly 0.6 must fire.
    return min(1.0, max(0.0, round(base + sum(deltas), 6)))


def _fires(score: float, threshold: float) -> bool:
    # A threshold of 1.0 (or one moved past it) means "never": a rule that can only fire on a
    # perfect score is a rule switched off, and calibrated models do emit 1.0 in float32.
    return threshold < 1.0 and score >= threshold


# ---- loading and validation ---------------------------------------------------------------
_PathT = tuple[str | int, ...]


def _dotted(path: _PathT) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


class _Lines:
    """Finds the YAML line of a key path in the composed node tree, for error messages."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: _PathT) -> int:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for p in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(p):
                        line, node = k.start_mark.line + 1, v
                        break
                else:
                    return line  # a missing key: point at its parent
            elif isinstance(node, yaml.SequenceNode) and isinstance(p, int) and p < len(node.value):
                node = node.value[p]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _find_duplicates(node: yaml.Node | None, source: str) -> None:
    """safe_load keeps the last of two equal keys; in a policy that hides a threshold."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                if k.value in seen:
                    raise PolicyError(
                        f"{source} line {k.start_mark.line + 1}: duplicate key {k.value!r}"
                    )
                seen.add(k.value)
            _find_duplicates(v, source)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _find_duplicates(v, source)


class _Validator:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: _PathT, message: str) -> PolicyError:
        line = self.lines.line(path)
        return PolicyError(f"{self.source} line {line}: {_dotted(path)}: {message}")

    def mapping(
        self,
        value: object,
        path: _PathT,
        *,
        required: Sequence[str] = (),
        optional: Sequence[str] = (),
        free_keys: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a mapping")
        known = (*required, *optional)
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"key {key!r} must be a string")
            if not free_keys and key not in known:
                raise self.fail(path + (key,), f"unknown key (expected one of: {', '.join(known)})")
        for key in required:
            if key not in value:
                raise self.fail(path + (key,), "required")
        return value

    def string(self, value: object, path: _PathT, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            hint = " (quote it)" if isinstance(value, int | float) else ""
            raise self.fail(path, f"must be a string{hint}")
        if not allow_empty and not value.strip():
            raise self.fail(path, "must not be empty")
        return value

    def number(self, value: object, path: _PathT, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.fail(path, "must be a number")
        if not lo <= value <= hi:
            raise self.fail(path, f"must be between {lo:g} and {hi:g}")
        return float(value)

    def integer(self, value: object, path: _PathT, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, "must be a whole number")
        if value < lo or (hi is not None and value > hi):
            raise self.fail(path, f"must be {lo} or more" if hi is None else f"must be {lo}..{hi}")
        return value

    def boolean(self, value: object, path: _PathT) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false")
        return value

    def queue_ref(self, value: object, path: _PathT, queues: Mapping[str, object]) -> str:
        name = self.string(value, path)
        if name not in queues:
            raise self.fail(path, f"unknown queue {name!r} (defined: {', '.join(queues)})")
        return name

    def actions(self, value: object, path: _PathT, *, refuse: Mapping[str, str]) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of actions")
        known = {a.value for a in ActionKind}
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or item not in known:
                raise self.fail(
                    path + (i,), f"unknown action {item!r} (known: {', '.join(sorted(known))})"
                )
            if item in refuse:
                raise self.fail(path + (i,), f"{item!r} {refuse[item]}")
            if item not in out:
                out.append(item)
        return tuple(out)


_TOP_REQUIRED = ("version", "name", "categories", "queues", "special_queues",
                 "severity_priority", "verdicts")
_TOP_OPTIONAL = ("description", "modifiers", "urgent_actions", "two_person_severity")


def policy_from_text(text: str, *, source: str = "<string>") -> Policy:
    """Parse and validate a policy; a `PolicyError` names the field path and the YAML line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _find_duplicates(root, source)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{source}{where}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    v = _Validator(source, _Lines(root))
    return _build(v, data, source, hashlib.sha256(text.encode()).hexdigest())


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read the policy: {exc}") from None
    return policy_from_text(text, source=str(path))


def bundled_policy(name: str = "default") -> Policy:
    """One of the policies shipped in `pipeline/policies/` (`default`, `demo`)."""
    path = POLICIES_DIR / f"{name}.yaml"
    if not re.fullmatch(r"[a-z0-9_-]+", name) or not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in POLICIES_DIR.glob("*.yaml")))
        raise PolicyError(f"no bundled policy {name!r} (shipped: {shipped})")
    return load_policy(path)


def _build(v: _Validator, data: object, source: str, digest: str) -> Policy:
    top = v.mapping(data, (), required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
    version = v.string(top["version"], ("version",))
    name = v.string(top["name"], ("name",))
    description = v.string(top.get("description", ""), ("description",), allow_empty=True)

    queues = _queues(v, top["queues"])
    categories = _categories(v, top["categories"], queues)
    special = _special_queues(v, top["special_queues"], queues)
    modifiers = _modifiers(v, top.get("modifiers", []), queues)

    sp_raw = v.mapping(top["severity_priority"], ("severity_priority",), required=SEVERITIES)
    severity_priority = {
        s: v.integer(sp_raw[s], ("severity_priority", s), 0) for s in SEVERITIES
    }
    for lower, higher in zip(SEVERITIES, SEVERITIES[1:], strict=False):
        if severity_priority[higher] < severity_priority[lower]:
            raise v.fail(("severity_priority", higher), f"must not be below {lower}'s priority")

    actions_by_severity, verdict_actions = _verdicts(v, top["verdicts"])

    urgent: frozenset[str] = frozenset(
        v.actions(top.get("urgent_actions", []), ("urgent_actions",), refuse={})
    )

    two_person: str | None = top.get("two_person_severity")
    if two_person is not None:
        if two_person not in _RANK:
            raise v.fail(("two_person_severity",), f"must be one of {', '.join(SEVERITIES)}")
        # Severe content must reach two people through its own queue; checked here, once,
        # rather than trusted to every queue author.
        for cname, cat in categories.items():
            severe = _RANK[cat.severity] >= _RANK[two_person]
            if severe and queues[cat.queue].reviewers_required < 2:
                raise v.fail(
                    ("categories", cname, "queue"),
                    f"{cat.severity} is at or above two_person_severity ({two_person}): "
                    f"queue {cat.queue!r} must have reviewers_required: 2",
                )
        if queues[special["bank_match"]].reviewers_required < 2:
            raise v.fail(
                ("special_queues", "bank_match"),
                "a known-violating bank match is critical: its queue must have "
                "reviewers_required: 2",
            )

    return Policy(
        name=name,
        version=version,
        description=description,
        categories=types.MappingProxyType(categories),
        queues=types.MappingProxyType(queues),
        modifiers=modifiers,
        severity_priority=types.MappingProxyType(severity_priority),
        qa_queue=special["qa"],
        appeals_queue=special["appeals"],
        escalation_queue=special["escalation"],
        bank_match_queue=special["bank_match"],
        urgent_actions=urgent,
        two_person_severity=two_person,
        actions_by_severity=types.MappingProxyType(actions_by_severity),
        verdict_actions=types.MappingProxyType(verdict_actions),
        source=source,
        digest=digest,
    )


def _queues(v: _Validator, raw: object) -> dict[str, QueueSpec]:
    path: _PathT = ("queues",)
    qmap = v.mapping(raw, path, free_keys=True)
    if not qmap:
        raise v.fail(path, "must define at least one queue")
    out: dict[str, QueueSpec] = {}
    pending_escalations: list[tuple[_PathT, object]] = []
    for qname, body in qmap.items():
        qp = path + (qname,)
        q = v.mapping(
            body, qp, required=("sla_hours", "reviewers_required"),
            optional=("role", "exposure_cap", "escalate_to", "description"),
        )
        sla = v.number(q["sla_hours"], qp + ("sla_hours",), 0.01, 24 * 365)
        reviewers = v.integer(q["reviewers_required"], qp + ("reviewers_required",), 1, 2)
        role = None if q.get("role") is None else v.string(q["role"], qp + ("role",))
        cap: int | None = None
        window: datetime.timedelta | None = None
        if q.get("exposure_cap") is not None:
            cp = qp + ("exposure_cap",)
            c = v.mapping(q["exposure_cap"], cp, required=("count", "window_hours"))
            cap = v.integer(c["count"], cp + ("count",), 1)
            window = datetime.timedelta(
                hours=v.number(c["window_hours"], cp + ("window_hours",), 0.01, 24 * 7)
            )
        if q.get("escalate_to") is not None:
            pending_escalations.append((qp + ("escalate_to",), q["escalate_to"]))
        out[qname] = QueueSpec(
            name=qname,
            sla=datetime.timedelta(hours=sla),
            role=role,
            reviewers_required=reviewers,
            exposure_cap=cap,
            exposure_window=window,
            escalate_to=q.get("escalate_to"),
            description=v.string(q.get("description", ""), qp + ("description",), allow_empty=True),
        )
    for ep, target in pending_escalations:  # may name a queue defined further down
        v.queue_ref(target, ep, out)
    return out


def _categories(
    v: _Validator, raw: object, queues: Mapping[str, QueueSpec]
) -> dict[str, CategorySpec]:
    path: _PathT = ("categories",)
    cmap = v.mapping(raw, path, free_keys=True)
    if not cmap:
        raise v.fail(path, "must define at least one category")
    out: dict[str, CategorySpec] = {}
    for cname, body in cmap.items():
        cp = path + (cname,)
        c = v.mapping(
            body, cp, required=("severity", "thresholds", "queue"),
            optional=("description", "qa_sample_rate"),
        )
        severity = c["severity"]
        if severity not in _RANK:
            raise v.fail(cp + ("severity",), f"must be one of {', '.join(SEVERITIES)}")
        tp = cp + ("thresholds",)
        t = v.mapping(c["thresholds"], tp, required=("review", "hold"))
        review = v.number(t["review"], tp + ("review",), 0.0, 1.0)
        hold = None if t["hold"] is None else v.number(t["hold"], tp + ("hold",), 0.0, 1.0)
        if hold is not None and hold < review:
            raise v.fail(tp + ("hold",), f"must be at least the review threshold ({review:g})")
        out[cname] = CategorySpec(
            name=cname,
            severity=severity,
            description=v.string(c.get("description", ""), cp + ("description",), allow_empty=True),
            thresholds=Thresholds(review=review, hold=hold),
            qa_sample_rate=v.number(c.get("qa_sample_rate", 0.0), cp + ("qa_sample_rate",), 0, 1),
            queue=v.queue_ref(c["queue"], cp + ("queue",), queues),
        )
    return out


def _special_queues(
    v: _Validator, raw: object, queues: Mapping[str, QueueSpec]
) -> dict[str, str]:
    path: _PathT = ("special_queues",)
    s = v.mapping(raw, path, required=("qa", "appeals", "escalation"), optional=("bank_match",))
    out = {k: v.queue_ref(s[k], path + (k,), queues) for k in ("qa", "appeals", "escalation")}
    out["bank_match"] = (
        v.queue_ref(s["bank_match"], path + ("bank_match",), queues)
        if "bank_match" in s
        else out["escalation"]
    )
    return out


def _modifiers(
    v: _Validator, raw: object, queues: Mapping[str, QueueSpec]
) -> tuple[Modifier, ...]:
    path: _PathT = ("modifiers",)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise v.fail(path, "must be a list of modifiers")
    out: list[Modifier] = []
    names: set[str] = set()
    for i, body in enumerate(raw):
        mp = path + (i,)
        m = v.mapping(
            body, mp, required=("name", "when"),
            optional=("threshold_delta", "disable_hold", "route_to", "priority_delta", "note"),
        )
        name = v.string(m["name"], mp + ("name",))
        if name in names:
            raise v.fail(mp + ("name",), f"modifier {name!r} is defined twice")
        names.add(name)
        field_name, conditions = _when(v, m["when"], mp + ("when",))
        review_delta = hold_delta = 0.0
        if m.get("threshold_delta") is not None:
            dp = mp + ("threshold_delta",)
            d = v.mapping(m["threshold_delta"], dp, optional=("review", "hold"))
            review_delta = v.number(d.get("review", 0.0), dp + ("review",), -1.0, 1.0)
            hold_delta = v.number(d.get("hold", 0.0), dp + ("hold",), -1.0, 1.0)
        disable_hold = v.boolean(m.get("disable_hold", False), mp + ("disable_hold",))
        route_to = None
        if m.get("route_to") is not None:
            route_to = v.queue_ref(m["route_to"], mp + ("route_to",), queues)
            if disable_hold and queues[route_to].reviewers_required > 1:
                # DESIGN.md: medical sharing never escalates straight to the two-person
                # severe queue unless a hash bank matched.
                raise v.fail(
                    mp + ("route_to",),
                    "a modifier that disables the automatic hold protects the uploader; it "
                    f"must not route to two-person queue {route_to!r}",
                )
        out.append(
            Modifier(
                name=name,
                field=field_name,
                conditions=conditions,
                review_delta=review_delta,
                hold_delta=hold_delta,
                disable_hold=disable_hold,
                route_to=route_to,
                priority_delta=v.integer(
                    m.get("priority_delta", 0), mp + ("priority_delta",), -1000, 1000
                ),
                note=v.string(m.get("note", ""), mp + ("note",), allow_empty=True),
            )
        )
    return tuple(out)


def _when(v: _Validator, raw: object, path: _PathT) -> tuple[str, tuple[tuple[str, Any], ...]]:
    w = v.mapping(raw, path, free_keys=True)
    # One field per modifier keeps each threshold move attributable to one fact in the
    # statement of reasons; combine facts by writing two modifiers.
    if len(w) != 1:
        raise v.fail(path, "must name exactly one context field")
    ((fname, cond),) = w.items()
    fp = path + (fname,)
    spec = _CONTEXT_FIELDS.get(fname)
    if spec is None:
        raise v.fail(fp, f"unknown context field (known: {', '.join(_CONTEXT_FIELDS)})")
    ordered = spec.kind in ("int", "optional_int")
    allowed = ("eq", "in", "lt", "lte", "gt", "gte") if ordered else ("eq", "in")
    raw_ops: dict[str, Any] = cond if isinstance(cond, dict) else {"eq": cond}
    if not raw_ops:
        raise v.fail(fp, "must give a value or at least one operator")
    expected = (
        f"one of {', '.join(spec.choices)}" if spec.kind == "choice"
        else "true or false" if spec.kind == "bool"
        else "a whole number" + (" or null" if spec.kind == "optional_int" else "")
    )
    conditions: list[tuple[str, Any]] = []
    for op, operand in raw_ops.items():
        op_path = fp + (op,) if isinstance(cond, dict) else fp
        if op not in allowed:
            raise v.fail(op_path, f"unknown operator for {fname} (allowed: {', '.join(allowed)})")
        if op == "in":
            if not isinstance(operand, list) or not operand:
                raise v.fail(op_path, "must be a non-empty list")
            for j, item in enumerate(operand):
                if not spec.accepts(item):
                    raise v.fail(op_path + (j,), f"must be {expected}")
            conditions.append((op, tuple(operand)))
        else:
            if not spec.accepts(operand) or (op != "eq" and operand is None):
                raise v.fail(op_path, f"must be {expected}")
            conditions.append((op, operand))
    return fname, tuple(conditions)


_NOT_FOR_VIOLATING = {
    ActionKind.HOLD_CONTENT.value: "is the automated outcome, not a reviewer's action",
    **{k.value: "restores; it cannot follow a violating verdict" for k in REVERSAL_KINDS},
}
_NOT_FOR_BENIGN = {
    k.value: "penalises; only restorative actions may follow this verdict"
    for k in ActionKind
    if k not in REVERSAL_KINDS
}


def _verdicts(
    v: _Validator, raw: object
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    path: _PathT = ("verdicts",)
    names = tuple(x.value for x in Verdict)
    vmap = v.mapping(raw, path, required=names)
    vp = path + (Verdict.VIOLATING.value,)
    violating = v.mapping(vmap[Verdict.VIOLATING], vp, required=("actions_by_severity",))
    sp = vp + ("actions_by_severity",)
    abs_raw = v.mapping(
        violating["actions_by_severity"], sp,
        required=("low", "medium", "high", "critical"), optional=("none",),
    )
    by_severity = {
        s: v.actions(abs_raw[s], sp + (s,), refuse=_NOT_FOR_VIOLATING)
        for s in SEVERITIES
        if s in abs_raw
    }
    others: dict[str, tuple[str, ...]] = {}
    for name in names:
        if name == Verdict.VIOLATING:
            continue
        op = path + (name,)
        body = v.mapping(vmap[name], op, required=("actions",))
        others[name] = v.actions(body["actions"], op + ("actions",), refuse=_NOT_FOR_BENIGN)
    return by_severity, others
