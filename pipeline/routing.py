"""The one way a model's result becomes what the review store records: the policy's decision
and the statement of reasons (scores, evidence, model version, content), as a `Routing`.

The REST and CLI path (`pipeline.scoring.Orchestrator`) and the batch recorder both call
`route`, so an upload gets the same decision and reasons whichever way it arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.base import ScoreResult
from pipeline.banks import BankHit
from pipeline.evidence import shadow_rows
from pipeline.policy import Context, Policy
from review import Routing

__all__ = ["route"]


def route(
    policy: Policy,
    result: ScoreResult,
    *,
    context: Context,
    sha256: str,
    bank_match: str | None = None,
    bank_hit: BankHit | None = None,
    shadow: Sequence[Mapping[str, Any]] | None = None,
) -> Routing:
    """Evaluate `result` under `policy` for an upload of content `sha256` with `context`.

    `shadow`: the shadow models' rows ({model_version, scores, error}) when they arrive
    apart from the result (a batch worker sends them as JSON); by default the result's own.
    `bank_hit`: the bank entry the matcher found (it sets `bank_match`); the entry, its
    distance and, for a clearance, who cleared it and when go into the reasons.
    Raises ValueError (a score outside [0, 1], a bad sha256) from the policy."""
    if bank_hit is not None:
        bank_match = bank_hit.bank
    decision = policy.evaluate(result.scores, context, content_sha256=sha256,
                               bank_match=bank_match)
    bank: dict[str, Any] = {}
    if bank_hit is not None:
        bank = {"bank": bank_hit.as_reason(),
                "routing": [bank_hit.summary, *decision.reasons.get("routing", [])]}
    reasons = {
        **decision.reasons,
        **bank,
        "content_sha256": sha256,
        "model_version": result.model_version,
        "evidence": [
            {"category": e.category, "label": e.label, "score": round(float(e.score), 4),
             "box": [round(float(v), 1) for v in e.box] if e.box else None}
            for e in result.evidence
        ],
    }
    return Routing(
        outcome=decision.outcome,
        queue=decision.queue,
        severity=decision.severity,
        priority=decision.priority,
        reviewers_required=decision.reviewers_required,
        proposed_actions=tuple(decision.proposed_actions),
        qa_sample=decision.qa_sample,
        scores={k: round(float(v), 4) for k, v in result.scores.items()},
        reasons=reasons,
        model_version=result.model_version,
        policy_version=policy.version,
        shadow_scores=tuple(
            {"model_version": r["model_version"],
             "scores": {k: round(float(v), 4) for k, v in r["scores"].items()},
             "error": r["error"]}
            for r in (shadow_rows(result) if shadow is None else shadow)
        ),
    )
