"""The policy as the classifier's training, evaluation and export see it (pipeline.policy_tools)."""

from __future__ import annotations

from pipeline.policy_tools import policy_outcome, review_thresholds, thresholds_in_force
from tests.synthetic import CATEGORIES, synthetic_policy


def test_policy_thresholds_move_with_context_as_in_production() -> None:
    policy = synthetic_policy()
    lookup = thresholds_in_force(policy)
    plain = lookup({"medical_sharing": False, "upload_id": "ignored"})
    medical = lookup({"medical_sharing": True})
    assert plain == dict.fromkeys(CATEGORIES, 0.5)
    assert medical == dict.fromkeys(CATEGORIES, 0.65)
    assert review_thresholds(policy) == plain  # no context: the policy's own thresholds
    outcome = policy_outcome(policy)
    assert outcome(dict.fromkeys(CATEGORIES, 0.0)) == ("allow", "allow", "allow")
    assert outcome({**dict.fromkeys(CATEGORIES, 0.0), CATEGORIES[0]: 0.95}) == (
        "hold", "review", "hold")
