"""The policy as the classifier's training and evaluation see it: the thresholds in force for a
row's context, and outcomes for parity checks.  models may not import the policy, so these
adapters turn it into the plain callables and mappings that models/classifier takes."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING

from pipeline.policy import Context, Policy

if TYPE_CHECKING:
    from models.classifier.data import ContextValue

_ZERO_SHA = "0" * 64  # evaluate() needs a content hash; none of these questions is about one


def thresholds_in_force(policy: Policy) -> Callable[[Mapping[str, ContextValue]], dict[str, float]]:
    """Context fields of a manifest row -> the review threshold in force per category.

    Asks the policy itself (so modifiers move thresholds exactly as in production); fields
    the policy does not know (a segment name, an id) are left out of the Context.
    """
    known = set(Context.model_fields)

    def lookup(raw: Mapping[str, ContextValue]) -> dict[str, float]:
        ctx = Context.parse({k: v for k, v in raw.items() if k in known and v is not None})
        decision = policy.evaluate({}, ctx, content_sha256=_ZERO_SHA)
        return {r["category"]: float(r["threshold"]) for r in decision.reasons["rules"]
                if r["rule"] == f"{r['category']}.review"}

    return lookup


def policy_outcome(policy: Policy) -> Callable[[Mapping[str, float]], Hashable]:
    """Scores -> the policy's outcomes under a few representative contexts (for parity)."""
    contexts = [Context(), Context(medical_sharing=True), Context(audience="public")]

    def outcome(scores: Mapping[str, float]) -> Hashable:
        clean = {k: min(1.0, max(0.0, float(v))) for k, v in scores.items()}
        return tuple(policy.evaluate(clean, c, content_sha256=_ZERO_SHA).outcome
                     for c in contexts)

    return outcome


def review_thresholds(policy: Policy) -> dict[str, float]:
    """Each category's review threshold without any context (what quantisation is judged at)."""
    return {c: s.thresholds.review for c, s in policy.categories.items()}
