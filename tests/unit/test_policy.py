"""The policy engine: loading and validation errors, context modifiers, routing, QA sampling.

Pure: the only files read are the bundled policies and files the tests write to tmp_path.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import PolicyError, UnknownContextField
from pipeline.policy import (
    POLICIES_DIR,
    Context,
    Policy,
    PolicyDecision,
    bundled_policy,
    load_policy,
    policy_from_text,
    qa_draw,
)
from review.states import REVERSAL_KINDS, ActionKind, Verdict

DEFAULT_TEXT = (POLICIES_DIR / "default.yaml").read_text(encoding="utf-8")
SHA = hashlib.sha256(b"a benign test image").hexdigest()
RANK = {"allow": 0, "review": 1, "hold": 2}


def sha(i: int | str) -> str:
    return hashlib.sha256(f"content-{i}".encode()).hexdigest()


def mutate(text: str, old: str, new: str, *, after: str = "") -> str:
    """Replace the first `old` that comes after `after` (so repeated lines can be targeted)."""
    start = text.index(after) if after else 0
    at = text.index(old, start)
    return text[:at] + new + text[at + len(old) :]


def line_of(text: str, marker: str) -> int:
    return text[: text.index(marker)].count("\n") + 1


def with_critical(text: str = DEFAULT_TEXT) -> str:
    """The default policy plus a critical category routed to the two-person severe queue."""
    return mutate(
        text,
        "queues:\n",
        "  test.critical:\n"
        "    severity: critical\n"
        "    thresholds: {review: 0.30, hold: 0.70}\n"
        "    queue: severe\n"
        "\nqueues:\n",
    )


@pytest.fixture(scope="module")
def policy() -> Policy:
    return bundled_policy("default")


@pytest.fixture(scope="module")
def demo() -> Policy:
    return bundled_policy("demo")


@pytest.fixture(scope="module")
def critical_policy() -> Policy:
    return policy_from_text(with_critical(), source="critical.yaml")


def rule(decision: PolicyDecision, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in decision.reasons["rules"] if r["rule"] == name]
    assert len(found) == 1
    return found[0]


# ---- loading --------------------------------------------------------------------------------
def test_both_bundled_policies_load(policy: Policy, demo: Policy) -> None:
    assert (policy.name, policy.version) == ("default", "2026.11.0")
    assert demo.name == "demo"
    assert demo.version != policy.version  # QA draws and reasons must tell them apart
    assert "never use in production" in demo.description.lower()
    assert set(policy.categories) == {
        "nudity.explicit", "nudity.partial", "skin.exposed", "person.face"
    }
    assert set(policy.categories) <= set(demo.categories)
    assert policy.urgent_actions == frozenset({"report"})
    assert (policy.qa_queue, policy.appeals_queue, policy.escalation_queue) == (
        "qa", "appeals", "senior"
    )
    assert policy.bank_match_queue == "severe"
    assert len(policy.digest) == 64 and policy.digest != demo.digest


def test_load_policy_reads_a_file_and_names_it_in_errors(tmp_path: Any) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text(DEFAULT_TEXT, encoding="utf-8")
    assert load_policy(good).version == "2026.11.0"
    assert load_policy(str(good)).source == str(good)

    bad = tmp_path / "default.yaml"
    text = mutate(DEFAULT_TEXT, "review: 0.45", "review: 1.45")
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as exc:
        load_policy(bad)
    line = line_of(text, "review: 1.45")
    assert exc.value.detail == (
        f"{bad} line {line}: categories.nudity.explicit.thresholds.review: "
        "must be between 0 and 1"
    )
    assert exc.value.code == "policy.invalid"

    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_bundled_policy_refuses_unknown_names() -> None:
    with pytest.raises(PolicyError, match="shipped: default, demo"):
        bundled_policy("../default")


# (old text, new text, anchor for `after`, marker locating the expected line, path, message)
LOAD_ERRORS = [
    pytest.param(
        "    severity: high\n", "    severity: high\n    colour: red\n", "", "colour: red",
        "categories.nudity.explicit.colour", "unknown key", id="unknown-key",
    ),
    pytest.param(
        "name: default\n", "name: default\nowner: me\n", "", "owner: me",
        "owner", "unknown key", id="unknown-top-level-key",
    ),
    pytest.param(
        "review: 0.45", "review: 1.45", "", "review: 1.45",
        "categories.nudity.explicit.thresholds.review", "must be between 0 and 1",
        id="threshold-out-of-range",
    ),
    pytest.param(
        "hold: 0.80", "hold: 0.30", "", "hold: 0.30",
        "categories.nudity.explicit.thresholds.hold", "at least the review threshold",
        id="hold-below-review",
    ),
    pytest.param(
        "{review: 0.60, hold: null}", "{review: 0.60}", "", "{review: 0.60}",
        "categories.nudity.partial.thresholds.hold", "required", id="hold-missing",
    ),
    pytest.param(
        "    queue: adult\n", "    queue: adults\n", "nudity.partial:", "queue: adults",
        "categories.nudity.partial.queue", "unknown queue 'adults'", id="unknown-queue",
    ),
    pytest.param(
        "route_to: medical", "route_to: clinic", "", "route_to: clinic",
        "modifiers[0].route_to", "unknown queue 'clinic'", id="unknown-route",
    ),
    pytest.param(
        "  escalation: senior", "  escalation: seniors", "", "escalation: seniors",
        "special_queues.escalation", "unknown queue", id="unknown-special-queue",
    ),
    pytest.param(
        "    escalate_to: senior\n", "    escalate_to: boss\n", "  severe:", "escalate_to: boss",
        "queues.severe.escalate_to", "unknown queue 'boss'", id="unknown-escalation",
    ),
    pytest.param(
        "high: [remove_content, suspend]", "high: [remove_content, banish]", "",
        "high: [remove_content, banish]",
        "verdicts.violating.actions_by_severity.high[1]", "unknown action 'banish'",
        id="unknown-action",
    ),
    pytest.param(
        "low: [remove_content]", "low: [hold_content]", "", "low: [hold_content]",
        "verdicts.violating.actions_by_severity.low[0]", "automated outcome",
        id="hold-is-not-a-verdict-action",
    ),
    pytest.param(
        "  benign:\n    actions: []", "  benign:\n    actions: [suspend]", "", "actions: [suspend]",
        "verdicts.benign.actions[0]", "only restorative", id="benign-cannot-penalise",
    ),
    pytest.param(
        "urgent_actions: [report]", "urgent_actions: [shout]", "", "urgent_actions: [shout]",
        "urgent_actions[0]", "unknown action", id="unknown-urgent-action",
    ),
    pytest.param(
        "when: {medical_sharing: true}", "when: {medical_shared: true}", "", "medical_shared",
        "modifiers[0].when.medical_shared", "unknown context field", id="bad-modifier-field",
    ),
    pytest.param(
        "when: {medical_sharing: true}", "when: {medical_sharing: 1}", "", "medical_sharing: 1",
        "modifiers[0].when.medical_sharing", "must be true or false", id="bad-modifier-bool",
    ),
    pytest.param(
        "{lt: 7}", "{lt: seven}", "", "lt: seven",
        "modifiers[3].when.account_age_days.lt", "whole number", id="bad-modifier-int",
    ),
    pytest.param(
        "when: {audience: public}", "when: {audience: everyone}", "", "audience: everyone",
        "modifiers[2].when.audience", "one of private, direct, followers, public",
        id="bad-modifier-choice",
    ),
    pytest.param(
        "when: {medical_sharing: true}", "when: {medical_sharing: {gt: true}}", "", "gt: true",
        "modifiers[0].when.medical_sharing.gt", "unknown operator", id="ordering-a-bool",
    ),
    pytest.param(
        "when: {audience: public}", "when: {audience: public, prior_strikes: 1}", "",
        "prior_strikes: 1}", "modifiers[2].when", "exactly one context field",
        id="two-fields-in-when",
    ),
    pytest.param(
        "  - name: verified_provider", "  - name: medical_sharing", "",
        "name: medical_sharing\n    when: {recipient",
        "modifiers[1].name", "defined twice", id="duplicate-modifier",
    ),
    pytest.param(
        "route_to: medical", "route_to: severe", "", "route_to: severe",
        "modifiers[0].route_to", "two-person queue 'severe'", id="protective-route-to-severe",
    ),
    pytest.param(
        "    severity: high\n", "    severity: severe\n", "", "severity: severe",
        "categories.nudity.explicit.severity", "must be one of none, low", id="bad-severity",
    ),
    pytest.param(
        "    severity: high\n", "    severity: critical\n", "nudity.explicit:", "queue: adult",
        "categories.nudity.explicit.queue", "reviewers_required: 2", id="critical-needs-two",
    ),
    pytest.param(
        "  bank_match: severe", "  bank_match: adult", "", "bank_match: adult",
        "special_queues.bank_match", "reviewers_required: 2", id="bank-match-needs-two",
    ),
    pytest.param(
        "    reviewers_required: 2\n", "    reviewers_required: 3\n", "", "reviewers_required: 3",
        "queues.severe.reviewers_required", "must be 1..2", id="three-reviewers",
    ),
    pytest.param(
        "  high: 60\n", "  high: 200\n", "", "critical: 100",
        "severity_priority.critical", "must not be below high", id="priority-not-monotone",
    ),
    pytest.param(
        'version: "2026.11.0"', "version: 2026.11", "", "version: 2026.11",
        "version", "must be a string (quote it)", id="unquoted-version",
    ),
]


@pytest.mark.parametrize(("old", "new", "after", "marker", "path", "message"), LOAD_ERRORS)
def test_load_errors_name_field_and_line(
    old: str, new: str, after: str, marker: str, path: str, message: str
) -> None:
    text = mutate(DEFAULT_TEXT, old, new, after=after)
    with pytest.raises(PolicyError) as exc:
        policy_from_text(text, source="default.yaml")
    detail = exc.value.detail
    assert detail.startswith(f"default.yaml line {line_of(text, marker)}: {path}: "), detail
    assert message in detail


def test_missing_version_is_refused() -> None:
    text = DEFAULT_TEXT.replace('version: "2026.11.0"\n', "")
    with pytest.raises(PolicyError) as exc:
        policy_from_text(text, source="default.yaml")
    # A missing top-level key points at the first line of the document's mapping.
    assert exc.value.detail == f"default.yaml line {line_of(text, 'name:')}: version: required"


def test_duplicate_keys_are_refused_not_silently_overwritten() -> None:
    text = mutate(DEFAULT_TEXT, "    queue: adult\n", "    queue: adult\n    queue: severe\n")
    with pytest.raises(PolicyError) as exc:
        policy_from_text(text, source="p.yaml")
    line = line_of(text, "queue: severe")
    assert exc.value.detail == f"p.yaml line {line}: duplicate key 'queue'"


def test_yaml_syntax_errors_name_the_line() -> None:
    text = mutate(DEFAULT_TEXT, "    queue: adult\n", "    queue: [adult\n")
    with pytest.raises(PolicyError, match=r"^p\.yaml line \d+: not valid YAML"):
        policy_from_text(text, source="p.yaml")


@pytest.mark.parametrize("text", ["", "just a string", "- a\n- list\n"])
def test_a_policy_must_be_a_mapping(text: str) -> None:
    with pytest.raises(PolicyError, match=r"^<string> line 1: \(top level\): must be a mapping"):
        policy_from_text(text)


# ---- evaluate: context modifiers --------------------------------------------------------------
def test_medical_sharing_turns_a_hold_into_a_medical_review(policy: Policy) -> None:
    scores = {"nudity.explicit": 0.90}
    plain = policy.evaluate(scores, Context(), content_sha256=SHA)
    assert (plain.outcome, plain.queue, plain.severity) == ("hold", "adult", "high")
    assert plain.proposed_actions == ("remove_content", "suspend")
    assert ActionKind.HOLD_CONTENT not in plain.proposed_actions

    medical = policy.evaluate(scores, Context(medical_sharing=True), content_sha256=SHA)
    assert (medical.outcome, medical.queue) == ("review", "medical")
    assert medical.reviewers_required == 1
    assert medical.categories == ("nudity.explicit",)
    reasons = medical.reasons
    assert [m["modifier"] for m in reasons["modifiers_applied"]] == ["medical_sharing"]
    review = rule(medical, "nudity.explicit.review")
    assert (review["base_threshold"], review["threshold"], review["fired"]) == (0.45, 0.6, True)
    assert review["moved_by"] == [
        {"modifier": "medical_sharing", "field": "medical_sharing", "value": True, "delta": 0.15}
    ]
    hold = rule(medical, "nudity.explicit.hold")
    assert (hold["threshold"], hold["fired"]) == (0.8, False)
    assert hold["disabled_by"] == ["medical_sharing"]
    note = "medical_sharing: routed to queue 'medical'; automatic hold disabled"
    assert note in reasons["routing"]
    assert any("disables the automatic hold" in note for note in reasons["routing"])
    assert reasons["context"]["medical_sharing"] is True
    json.dumps(reasons)  # a statement of reasons is stored and shown as JSON


def test_medical_sharing_raises_the_review_bar(policy: Policy) -> None:
    scores = {"nudity.explicit": 0.50}
    assert policy.evaluate(scores, Context(), content_sha256=SHA).outcome == "review"
    medical = policy.evaluate(scores, Context(medical_sharing=True), content_sha256=SHA)
    assert medical.outcome == "allow"
    assert medical.proposed_actions == ()


def test_verified_provider_is_reviewed_in_the_medical_queue(policy: Policy) -> None:
    ctx = Context(recipient_verified_provider=True)
    decision = policy.evaluate({"nudity.explicit": 0.95}, ctx, content_sha256=SHA)
    assert (decision.outcome, decision.queue) == ("review", "medical")
    assert rule(decision, "nudity.explicit.review")["threshold"] == 0.55
    assert rule(decision, "nudity.explicit.hold")["disabled_by"] == ["verified_provider"]
    both = policy.evaluate(
        {"nudity.explicit": 0.95}, ctx.model_copy(update={"medical_sharing": True}),
        content_sha256=SHA,
    )
    assert rule(both, "nudity.explicit.review")["threshold"] == 0.7  # moves add up
    assert both.queue == "medical"


@pytest.mark.parametrize(
    ("context", "review", "hold", "modifiers"),
    [
        (Context(), 0.45, 0.80, []),
        (Context(medical_sharing=True), 0.60, 0.80, ["medical_sharing"]),
        (Context(recipient_verified_provider=True), 0.55, 0.80, ["verified_provider"]),
        (Context(audience="public"), 0.40, 0.75, ["public_audience"]),
        (Context(audience="followers"), 0.45, 0.80, []),
        (Context(account_age_days=3), 0.40, 0.80, ["new_account"]),
        (Context(account_age_days=7), 0.45, 0.80, []),  # lt 7: a week old is not new
        (Context(account_age_days=None), 0.45, 0.80, []),  # unknown age matches no comparison
        (Context(prior_strikes=2), 0.35, 0.80, ["repeat_offender"]),
        (Context(prior_strikes=1), 0.45, 0.80, []),
        (
            Context(audience="public", account_age_days=0, prior_strikes=5),
            0.25, 0.75, ["public_audience", "new_account", "repeat_offender"],
        ),
    ],
)
def test_each_modifier_moves_the_thresholds(
    policy: Policy, context: Context, review: float, hold: float, modifiers: list[str]
) -> None:
    decision = policy.evaluate({}, context, content_sha256=SHA)
    assert rule(decision, "nudity.explicit.review")["threshold"] == review
    assert rule(decision, "nudity.explicit.hold")["threshold"] == hold
    assert [m["modifier"] for m in decision.reasons["modifiers_applied"]] == modifiers
    moved = [m["modifier"] for m in rule(decision, "nudity.explicit.review")["moved_by"]]
    assert moved == modifiers  # recorded in policy order


def test_a_public_audience_lowers_both_thresholds(policy: Policy) -> None:
    private, public = Context(audience="private"), Context(audience="public")
    assert policy.evaluate({"nudity.explicit": 0.42}, private, content_sha256=SHA).outcome == (
        "allow"
    )
    assert policy.evaluate({"nudity.explicit": 0.42}, public, content_sha256=SHA).outcome == (
        "review"
    )
    assert policy.evaluate({"nudity.explicit": 0.77}, private, content_sha256=SHA).outcome == (
        "review"
    )
    assert policy.evaluate({"nudity.explicit": 0.77}, public, content_sha256=SHA).outcome == "hold"


def test_account_history_raises_priority(policy: Policy) -> None:
    scores = {"nudity.partial": 0.9}

    def priority(ctx: Context) -> int:
        return policy.evaluate(scores, ctx, content_sha256=SHA).priority

    base = priority(Context())
    assert base == policy.severity_priority["medium"]
    assert priority(Context(prior_strikes=2)) == base + 10
    assert priority(Context(account_age_days=1)) == base + 5
    assert priority(Context(prior_strikes=3, account_age_days=1)) == base + 15
    high = policy.evaluate({"nudity.explicit": 0.5}, Context(), content_sha256=SHA)
    assert high.priority > base  # severity orders the queue first


def test_a_score_on_the_threshold_fires_and_1_0_means_never(policy: Policy) -> None:
    assert policy.evaluate({"nudity.explicit": 0.45}, Context(), content_sha256=SHA).outcome == (
        "review"
    )
    assert policy.evaluate({"nudity.explicit": 0.80}, Context(), content_sha256=SHA).outcome == (
        "hold"
    )
    # person.face and skin.exposed are informational in the default policy
    face = policy.evaluate({"person.face": 1.0, "skin.exposed": 1.0}, Context(), content_sha256=SHA)
    assert face.outcome == "allow"
    # thresholds moved past 1.0 are clamped and still mean never
    ctx = Context(medical_sharing=True, recipient_verified_provider=True)
    clamped = rule(policy.evaluate({}, ctx, content_sha256=SHA), "skin.exposed.review")
    assert clamped["threshold"] == 1.0


def test_the_demo_policy_routes_a_face_to_the_demo_queue(policy: Policy, demo: Policy) -> None:
    scores = {"person.face": 0.93, "skin.exposed": 0.2}
    assert policy.evaluate(scores, Context(), content_sha256=SHA).outcome == "allow"
    decision = demo.evaluate(scores, Context(), content_sha256=SHA)
    assert (decision.outcome, decision.queue, decision.severity) == ("review", "demo", "low")


def test_the_worst_category_picks_the_queue(critical_policy: Policy) -> None:
    decision = critical_policy.evaluate(
        {"nudity.explicit": 0.99, "test.critical": 0.35}, Context(), content_sha256=SHA
    )
    assert (decision.outcome, decision.queue, decision.severity) == ("hold", "severe", "critical")
    assert decision.reviewers_required == 2
    assert decision.categories == ("nudity.explicit", "test.critical")
    assert decision.proposed_actions == ("remove_content", "suspend", "terminate", "report")


def test_medical_context_never_goes_straight_to_the_two_person_queue(
    critical_policy: Policy,
) -> None:
    scores = {"test.critical": 0.95}
    medical = Context(medical_sharing=True)
    decision = critical_policy.evaluate(scores, medical, content_sha256=SHA)
    assert (decision.outcome, decision.queue) == ("review", "medical")
    assert decision.severity == "critical"
    assert any("kept out of two-person queue 'severe'" in n for n in decision.reasons["routing"])
    matched = critical_policy.evaluate(scores, medical, content_sha256=SHA, bank_match="violating")
    assert (matched.outcome, matched.queue, matched.reviewers_required) == ("review", "severe", 2)


def test_account_history_routes_cannot_drop_a_second_reviewer() -> None:
    text = mutate(
        with_critical(), "    priority_delta: 10\n",
        "    priority_delta: 10\n    route_to: senior\n",
    )
    p = policy_from_text(text)
    ctx = Context(prior_strikes=4)
    severe = p.evaluate({"test.critical": 0.5}, ctx, content_sha256=SHA)
    assert (severe.queue, severe.reviewers_required) == ("severe", 2)
    assert any("needs 2 reviewers" in n for n in severe.reasons["routing"])
    adult = p.evaluate({"nudity.explicit": 0.5}, ctx, content_sha256=SHA)
    assert adult.queue == "senior"
    # a protective route still comes first when both match
    both = p.evaluate(
        {"nudity.explicit": 0.5}, ctx.model_copy(update={"medical_sharing": True}),
        content_sha256=SHA,
    )
    assert both.queue == "medical"


# ---- evaluate: hash banks ----------------------------------------------------------------
@pytest.mark.parametrize(
    "context", [Context(), Context(medical_sharing=True), Context(prior_strikes=3)]
)
def test_a_violating_bank_match_is_reviewed_in_the_severe_queue_at_top_priority(
    policy: Policy, context: Context
) -> None:
    decision = policy.evaluate({}, context, content_sha256=SHA, bank_match="violating")
    assert (decision.outcome, decision.queue, decision.severity) == ("review", "severe", "critical")
    assert decision.reviewers_required == 2
    assert decision.priority >= policy.severity_priority["critical"]
    top_scored = policy.evaluate(
        {"nudity.explicit": 1.0}, context, content_sha256=SHA
    )
    assert decision.priority > top_scored.priority
    assert decision.proposed_actions == ("remove_content", "suspend", "terminate", "report")
    assert decision.qa_sample is False
    assert decision.reasons["bank_match"] == "violating"


def test_a_violating_bank_match_still_holds_what_the_scores_hold(policy: Policy) -> None:
    decision = policy.evaluate(
        {"nudity.explicit": 0.9}, Context(), content_sha256=SHA, bank_match="violating"
    )
    assert (decision.outcome, decision.queue) == ("hold", "severe")


def test_a_cleared_benign_match_is_not_flagged_again(policy: Policy) -> None:
    scores = {"nudity.explicit": 0.95, "nudity.partial": 0.9}
    decision = policy.evaluate(scores, Context(), content_sha256=SHA, bank_match="cleared_benign")
    assert (decision.outcome, decision.queue, decision.qa_sample) == ("allow", None, False)
    assert decision.proposed_actions == () and decision.categories == ()
    assert decision.reasons["suppressed_by_cleared_match"] == ["nudity.explicit", "nudity.partial"]
    assert any("already cleared" in n for n in decision.reasons["routing"])
    assert decision.reasons["qa_draws"] == []  # a person already looked; no QA sample either


def test_a_cleared_match_does_not_hide_a_critical_score(critical_policy: Policy) -> None:
    kw: dict[str, Any] = {"content_sha256": SHA, "bank_match": "cleared_benign"}
    below = critical_policy.evaluate({"test.critical": 0.5}, Context(), **kw)
    assert below.outcome == "allow"
    above = critical_policy.evaluate({"test.critical": 0.9}, Context(), **kw)
    assert (above.outcome, above.queue) == ("review", "severe")
    assert any("'cleared_benign' noted" in n for n in above.reasons["routing"])


# ---- evaluate: QA sampling -----------------------------------------------------------------
def qa_policy(rate: float) -> Policy:
    text = DEFAULT_TEXT.replace("qa_sample_rate: 0.01", "qa_sample_rate: 0.0")
    text = mutate(text, "qa_sample_rate: 0.0", f"qa_sample_rate: {rate}")
    return policy_from_text(text)


def test_qa_sampling_is_deterministic(policy: Policy) -> None:
    p = qa_policy(0.5)
    first = [p.evaluate({}, Context(), content_sha256=sha(i)) for i in range(50)]
    again = [p.evaluate({}, Context(), content_sha256=sha(i)) for i in range(50)]
    assert [d.qa_sample for d in first] == [d.qa_sample for d in again]
    assert [d.reasons for d in first] == [d.reasons for d in again]
    assert 0 < sum(d.qa_sample for d in first) < 50
    assert qa_draw("v1", "c", SHA) == qa_draw("v1", "c", SHA)
    assert qa_draw("v1", "c", SHA) != qa_draw("v2", "c", SHA)  # a new version redraws
    upper = p.evaluate({}, Context(), content_sha256=sha(1).upper())
    assert upper.qa_sample == first[1].qa_sample


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.3])
def test_the_sampled_fraction_matches_the_rate(rate: float) -> None:
    p = qa_policy(rate)
    n = 4000
    sampled = [p.evaluate({}, Context(), content_sha256=sha(i)) for i in range(n)]
    fraction = sum(d.qa_sample for d in sampled) / n
    tolerance = 5 * math.sqrt(rate * (1 - rate) / n)  # five binomial standard deviations
    assert abs(fraction - rate) < tolerance
    for d in sampled:
        if d.qa_sample:
            assert (d.outcome, d.queue, d.proposed_actions) == ("allow", "qa", ())
            assert d.categories == ()
        else:
            assert d.queue is None and d.reviewers_required == 0


def test_default_policy_samples_each_qa_category(policy: Policy) -> None:
    n = 4000
    rate = 1 - (1 - 0.01) ** 2  # nudity.explicit and nudity.partial, drawn independently
    fraction = sum(
        policy.evaluate({}, Context(), content_sha256=sha(i)).qa_sample for i in range(n)
    ) / n
    assert abs(fraction - rate) < 5 * math.sqrt(rate * (1 - rate) / n)


def test_flagged_content_is_never_qa_sampled() -> None:
    p = qa_policy(1.0)
    assert p.evaluate({}, Context(), content_sha256=SHA).qa_sample is True
    flagged = p.evaluate({"nudity.explicit": 0.5}, Context(), content_sha256=SHA)
    assert (flagged.qa_sample, flagged.outcome, flagged.queue) == (False, "review", "adult")


# ---- evaluate: inputs ----------------------------------------------------------------------
def test_unknown_and_missing_scores_are_recorded(policy: Policy) -> None:
    decision = policy.evaluate({"nudity.explicit": 0.1, "weapon": 0.99}, Context(),
                               content_sha256=SHA)
    assert decision.reasons["unscored_by_policy"] == ["weapon"]
    assert decision.reasons["missing_scores_counted_as_zero"] == [
        "nudity.partial", "skin.exposed", "person.face"
    ]
    assert rule(decision, "nudity.partial.review")["score"] == 0.0
    assert rule(decision, "nudity.explicit.review")["score"] == 0.1


def test_scores_are_rounded_in_the_reasons(policy: Policy) -> None:
    decision = policy.evaluate({"nudity.explicit": 0.123456789}, Context(), content_sha256=SHA)
    assert rule(decision, "nudity.explicit.review")["score"] == 0.1235


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1, True, "0.5"])
def test_scores_that_would_fail_open_are_refused(policy: Policy, bad: Any) -> None:
    with pytest.raises(ValueError, match="nudity.explicit"):
        policy.evaluate({"nudity.explicit": bad}, Context(), content_sha256=SHA)


def test_bad_content_hash_and_bank_match_are_refused(policy: Policy) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        policy.evaluate({}, Context(), content_sha256="abc")
    with pytest.raises(ValueError, match="bank_match"):
        policy.evaluate({}, Context(), content_sha256=SHA, bank_match="maybe")


# ---- verdicts and queues -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("categories", "actions"),
    [
        (["nudity.partial"], ("remove_content", "warn")),
        (["nudity.explicit"], ("remove_content", "suspend")),
        (["nudity.partial", "nudity.explicit"], ("remove_content", "suspend")),
        (["skin.exposed"], ("remove_content",)),
        (["person.face"], ()),  # severity none proposes nothing
    ],
)
def test_actions_for_a_violating_verdict_follow_the_worst_severity(
    policy: Policy, categories: list[str], actions: tuple[str, ...]
) -> None:
    assert policy.actions_for_verdict(Verdict.VIOLATING, categories) == actions
    assert policy.actions_for_verdict("violating", categories) == actions


def test_actions_for_the_other_verdicts(policy: Policy) -> None:
    for verdict in (Verdict.BENIGN, Verdict.BENIGN_MEDICAL, Verdict.NEED_MORE_CONTEXT):
        assert policy.actions_for_verdict(verdict, ["nudity.explicit"]) == ()
    with pytest.raises(PolicyError, match="unknown categories weapon"):
        policy.actions_for_verdict("violating", ["nudity.explicit", "weapon"])
    with pytest.raises(PolicyError, match="at least one category"):
        policy.actions_for_verdict("violating", [])
    with pytest.raises(PolicyError, match="unknown verdict 'guilty'"):
        policy.actions_for_verdict("guilty", [])


def test_verdict_actions_are_action_kinds(policy: Policy, demo: Policy) -> None:
    kinds = {a.value for a in ActionKind}
    for p in (policy, demo):
        for actions in p.actions_by_severity.values():
            assert set(actions) <= kinds - {ActionKind.HOLD_CONTENT} - REVERSAL_KINDS
        for actions in p.verdict_actions.values():
            assert set(actions) <= set(REVERSAL_KINDS)
        assert p.urgent_actions <= kinds


def test_queue_for(policy: Policy) -> None:
    severe = policy.queue_for("severe")
    assert severe.sla == datetime.timedelta(hours=4)
    assert (severe.role, severe.reviewers_required, severe.escalate_to) == ("senior", 2, "senior")
    assert (severe.exposure_cap, severe.exposure_window) == (40, datetime.timedelta(hours=8))
    medical = policy.queue_for("medical")
    assert (medical.role, medical.reviewers_required, medical.sla) == (
        "medical", 1, datetime.timedelta(hours=12)
    )
    assert policy.queue_for("adult").exposure_cap is None
    with pytest.raises(PolicyError, match="unknown queue 'nowhere'"):
        policy.queue_for("nowhere")
    with pytest.raises(dataclasses.FrozenInstanceError):
        severe.reviewers_required = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.queues["new"] = severe  # type: ignore[index]


# ---- context ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True),
     ("false", False), ("0", False), ("no", False), ("No", False)],
)
def test_from_pairs_reads_booleans(raw: str, value: bool) -> None:
    assert Context.from_pairs([f"medical_sharing={raw}"]).medical_sharing is value


def test_from_pairs_reads_every_field() -> None:
    ctx = Context.from_pairs([
        "medical_sharing=yes", "recipient_verified_provider=0", "audience=public",
        "account_age_days=3", " prior_strikes = 2 ",
    ])
    assert ctx == Context(
        medical_sharing=True, audience="public", account_age_days=3, prior_strikes=2
    )
    assert Context.from_pairs([]) == Context()
    assert Context.from_pairs(["account_age_days=none"]).account_age_days is None


@pytest.mark.parametrize(
    ("pairs", "names"),
    [
        (["colour=red"], "unknown context field 'colour'"),
        (["medical_sharing=maybe"], "'medical_sharing': 'maybe' is not a boolean"),
        (["account_age_days=old"], "'account_age_days': 'old' is not a whole number"),
        (["prior_strikes=-1"], "'prior_strikes'"),
        (["audience=world"], "'audience'"),
        (["medical_sharing"], "expected key=value"),
        (["audience=public", "audience=private"], "'audience': given more than once"),
    ],
)
def test_from_pairs_errors_name_the_key(pairs: list[str], names: str) -> None:
    with pytest.raises(UnknownContextField) as exc:
        Context.from_pairs(pairs)
    assert names in exc.value.detail
    assert exc.value.code == "context.invalid"


def test_parse_names_the_field_and_hides_pydantic() -> None:
    assert Context.parse({"medical_sharing": True, "audience": "direct"}) == Context(
        medical_sharing=True, audience="direct"
    )
    with pytest.raises(UnknownContextField, match="unknown context field 'diagnosis'"):
        Context.parse({"diagnosis": "rash"})
    # strict: a string is not a boolean here, whatever it says
    with pytest.raises(UnknownContextField, match="'medical_sharing'"):
        Context.parse({"medical_sharing": "yes"})
    with pytest.raises(UnknownContextField, match="'account_age_days'"):
        Context.parse({"account_age_days": -3})


def test_context_is_frozen() -> None:
    ctx = Context()
    with pytest.raises(ValueError, match="frozen"):
        ctx.medical_sharing = True


# ---- properties ------------------------------------------------------------------------
POLICIES = {
    "default": bundled_policy("default"),
    "demo": bundled_policy("demo"),
    "critical": policy_from_text(with_critical()),
}
contexts = st.builds(
    Context,
    medical_sharing=st.booleans(),
    recipient_verified_provider=st.booleans(),
    audience=st.sampled_from(["private", "direct", "followers", "public"]),
    account_age_days=st.none() | st.integers(0, 30),
    prior_strikes=st.integers(0, 5),
)
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def evaluations(draw: st.DrawFn) -> tuple[Policy, dict[str, float], str, float]:
    policy = POLICIES[draw(st.sampled_from(sorted(POLICIES)))]
    scores = {c: draw(unit) for c in policy.categories if draw(st.booleans())}
    raised = draw(st.sampled_from(sorted(policy.categories)))
    higher = draw(st.floats(scores.get(raised, 0.0), 1.0, allow_nan=False))
    return policy, scores, raised, higher


@settings(deadline=None)
@given(
    evaluations(),
    contexts,
    st.sampled_from([None, "violating", "cleared_benign"]),
    st.binary(max_size=8),
)
def test_raising_a_score_never_lowers_the_outcome(
    case: tuple[Policy, dict[str, float], str, float],
    context: Context,
    bank_match: str | None,
    content: bytes,
) -> None:
    policy, scores, raised, higher = case
    digest = hashlib.sha256(content).hexdigest()
    before = policy.evaluate(scores, context, content_sha256=digest, bank_match=bank_match)
    after = policy.evaluate(
        {**scores, raised: higher}, context, content_sha256=digest, bank_match=bank_match
    )
    assert RANK[after.outcome] >= RANK[before.outcome]
    for d in (before, after):
        assert ActionKind.HOLD_CONTENT not in d.proposed_actions
        if d.outcome == "allow":
            assert d.proposed_actions == () and d.categories == ()
            assert d.queue == (policy.qa_queue if d.qa_sample else None)
        else:
            assert d.qa_sample is False and d.queue is not None
            assert d.reviewers_required == policy.queues[d.queue].reviewers_required
        # invariant: a medical context reaches a two-person queue only through a bank match
        if context.medical_sharing and bank_match != "violating" and d.queue is not None:
            assert policy.queues[d.queue].reviewers_required == 1
        json.dumps(d.reasons)
