"""Evaluation: scores + context (+ a hash-bank match) → a decision with its statement of reasons.

Pure: the same scores, context, content and policy version give the same decision.  Nothing
here acts on an account: the only automated outcomes are allow, a content hold and review
(invariant 1); `proposed_actions` are suggestions a person must approve.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.policy.context import Context
from pipeline.policy.model import (
    BANK_MATCHES,
    SEVERITY_RANK,
    Modifier,
    Outcome,
    PolicyDecision,
    qa_draw,
)
from review import Verdict

if TYPE_CHECKING:
    from pipeline.policy.model import Policy

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _r(x: float) -> float:
    return round(x, 4)


def evaluate(
    policy: Policy,
    scores: Mapping[str, float],
    context: Context,
    *,
    content_sha256: str,
    bank_match: str | None = None,
) -> PolicyDecision:
    """`Policy.evaluate`: see there."""
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

    matched = [m for m in policy.modifiers if m.matches(context)]
    ev = _Evaluation(policy, clean, matched)
    routing: list[str] = []

    fired = ev.fired()
    hold = any(ev.hold_fired[c] for c in fired)
    suppressed: list[str] = []
    outcome: Outcome
    queue: str | None
    if bank_match == "violating":
        outcome = "hold" if hold else "review"
        severity = "critical"
        queue = policy.bank_match_queue
        proposed = policy.actions_by_severity.get("critical", ())
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
                if policy.categories[c].severity == "critical" and ev.hold_would_fire[c]
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
        queue = _route(policy, ev, fired, matched, routing) if fired else None
        proposed = policy.actions_for_verdict(Verdict.VIOLATING, fired) if fired else ()

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
        for cat in policy.categories.values():
            if cat.qa_sample_rate > 0:
                draw = qa_draw(policy.version, cat.name, content_sha256)
                hit = draw < cat.qa_sample_rate
                qa_draws.append(
                    {"category": cat.name, "rate": cat.qa_sample_rate,
                     "draw": round(draw, 6), "sampled": hit}
                )
                qa_sample = qa_sample or hit
        if qa_sample:
            queue = policy.qa_queue
            routing.append(f"sampled for quality control into queue {queue!r}; no enforcement")
    elif outcome == "allow" and suppressed and policy.banks.cleared_match == "sample":
        # the policy keeps an eye on its clearances: a share of what they let through is
        # looked at again, at low priority, never enforced
        rate = policy.banks.cleared_sample_rate
        draw = qa_draw(policy.version, "bank.cleared_benign", content_sha256)
        qa_sample = draw < rate
        qa_draws.append({"category": "bank.cleared_benign", "rate": rate,
                         "draw": round(draw, 6), "sampled": qa_sample})
        if qa_sample:
            queue = policy.qa_queue
            routing.append(f"a cleared match, sampled for quality control into queue {queue!r} "
                           "at low priority; no enforcement")

    if outcome == "allow":
        # QA items are routine work; risk-based priority deltas are for flagged content.
        priority = policy.severity_priority["none"]
    else:
        priority = policy.severity_priority[severity] + sum(m.priority_delta for m in matched)
    reviewers = policy.queues[queue].reviewers_required if queue is not None else 0
    categories = tuple(fired)
    unscored = sorted(k for k in clean if k not in policy.categories)
    missing = [c for c in policy.categories if c not in clean]

    reasons: dict[str, Any] = {
        "policy": {"name": policy.name, "version": policy.version, "digest": policy.digest},
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
    policy: Policy, ev: _Evaluation, fired: list[str], matched: list[Modifier], routing: list[str]
) -> str:
    worst = max(fired, key=lambda c: (SEVERITY_RANK[policy.categories[c].severity], ev.scores[c]))
    spec = policy.categories[worst]
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
        current = policy.queues[queue].reviewers_required
        if i > 0:
            routing.append(
                f"{m.name}: route to {m.route_to!r} not used; {routers[0].name} comes first"
            )
        elif not m.disable_hold and policy.queues[m.route_to].reviewers_required < current:
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
        return max(sevs, key=SEVERITY_RANK.__getitem__) if sevs else "none"

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
