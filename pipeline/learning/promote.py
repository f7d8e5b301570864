"""`lookfirst models promote`: make a candidate the active model, only when it is not worse
where it matters.

The candidate is compared with the active model (pipeline.learning.compare); it is refused
when, on a protected segment of the policy (medically shared uploads by default), the share of
benign uploads and images it would flag is larger than the active model's by more than the
policy's tolerance, or when there is no benign upload or image in that segment to judge by.
`force` overrides the refusal (and a failed training quality gate) and needs a reason.

A promotion is recorded twice: in the registry's history (the check, the operator, the reason)
and as a `model.promoted` event in review's audit chain, written in the transaction that
commits right after the registry changes (and the registry is put back if it cannot commit).
With no active model there is nothing to be worse than: the first promotion is recorded the
same way, with no check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from models.classifier.registry import Entry, ModelRegistry
from pipeline.auth.operator import Operator, current
from pipeline.learning.compare import Comparison
from pipeline.learning.errors import PromotionRefused, ReasonRequired
from pipeline.runtime import Runtime
from review import append_audit_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    entry: Entry
    previous: str | None
    forced: bool
    reason: str | None
    check: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"promoted": self.entry.ref, "model_version": self.entry.model_version,
                "previous": self.previous, "forced": self.forced, "reason": self.reason,
                "check": self.check}


def promote(
    rt: Runtime,
    registry: ModelRegistry,
    candidate: str,
    *,
    comparison: Comparison | None,
    force: bool = False,
    reason: str | None = None,
    operator: Operator | None = None,
) -> Promotion:
    """Activate `candidate` if `comparison` (None: there is no active model) lets it."""
    reason = (reason or "").strip() or None
    if force and reason is None:
        raise ReasonRequired("--force needs --reason: why this model goes live anyway "
                             "(it is audited)")
    entry = registry.resolve(candidate)
    previous = registry.active()
    if comparison is not None and comparison.candidate.entry.ref != entry.ref:
        raise ValueError("the comparison is of another candidate")  # a caller's bug
    check = comparison.protected if comparison is not None else None
    refused = check is not None and not check.passed
    if refused and not force:
        assert check is not None
        raise PromotionRefused(
            f"{entry.ref} is not promoted: " + "; ".join(check.problems())
            + ". Retrain, or promote with --force --reason (audited)")
    op = operator or current()
    record = {"promotion": {
        "by": op.credential, "operator": op.principal().label,
        "previous": previous.ref if previous else None,
        "check": check.as_dict() if check is not None else None,
        "headline": comparison.headline()["text"] if comparison is not None else None,
        "forced": refused, "reason": reason,
    }}
    data = {"ref": entry.ref, "model_version": entry.model_version,
            "previous": record["promotion"]["previous"], "forced": refused, "reason": reason,
            "operator": op.principal().label,
            "protected": ({s.segment: s.as_dict()["fpr"] | {"benign": s.benign}
                           for s in check.segments} if check is not None else None)}
    changed = None
    try:
        with rt.db.transaction() as s:
            append_audit_event(s, at=rt.review.clock(), actor=op.credential,
                               event="model.promoted", subject_type="model",
                               subject_id=entry.sha256, data=data)
            s.flush()  # the event is in place before the registry changes
            changed = registry.set_status(entry.ref, "active", force=force, record=record)
    except BaseException:
        if changed is not None:
            # the audit event did not commit: what served before serves again
            undo = {"reverted": "the promotion's audit event did not commit"}
            if previous is not None:
                registry.set_status(previous.ref, "active", force=True, record=undo)
            else:
                registry.set_status(entry.ref, entry.status,  # type: ignore[arg-type]
                                    force=True, record=undo)
        raise
    log.info("model promoted", extra={"model_version": entry.model_version, "forced": refused})
    return Promotion(changed, previous.ref if previous else None, refused, reason,
                     check.as_dict() if check is not None else None)
