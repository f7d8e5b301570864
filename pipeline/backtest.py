"""Policy backtest: replay stored scores and contexts under a candidate policy and show what
would change before it ships — review volume per queue, holds, and, where people have already
decided, the false positives and negatives the change would have caused.

Pure reading: nothing is written, nothing is rescored (the stored scores are what the model
said; a new model is a different question, answered by shadow scoring).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from pipeline.policy import Context, Policy
from review import Verdict, human_resolutions, iter_decisions

_HUMAN_POSITIVE = {Verdict.VIOLATING}
_HUMAN_NEGATIVE = {Verdict.BENIGN, Verdict.BENIGN_MEDICAL}


@dataclass
class BacktestReport:
    current: str
    candidate: str
    decisions: int = 0
    #: (outcome now, outcome under the candidate) -> count
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    queue_volume_now: Counter[str] = field(default_factory=Counter)
    queue_volume_candidate: Counter[str] = field(default_factory=Counter)
    #: decisions people already made, and what the candidate would have done with them
    human_violating_allowed: int = 0  # estimated false negatives introduced
    human_benign_flagged: int = 0  # estimated false positives (review or hold)
    human_benign_held: int = 0  # benign content the candidate would have hidden automatically
    human_violating: int = 0
    human_benign: int = 0
    #: the same, for medically shared uploads: the headline segment
    medical_flagged_now: int = 0
    medical_flagged_candidate: int = 0
    medical_total: int = 0
    newly_held: list[str] = field(default_factory=list)
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "candidate": self.candidate,
            "decisions": self.decisions,
            "transitions": [
                {"now": a, "candidate": b, "count": n}
                for (a, b), n in sorted(self.transitions.items())
            ],
            "queue_volume": {
                q: {"now": self.queue_volume_now[q], "candidate": self.queue_volume_candidate[q]}
                for q in sorted(set(self.queue_volume_now) | set(self.queue_volume_candidate))
            },
            "human_labels": {
                "violating": self.human_violating,
                "benign": self.human_benign,
                "violating_now_allowed": self.human_violating_allowed,
                "benign_now_flagged": self.human_benign_flagged,
                "benign_now_held": self.human_benign_held,
            },
            "medical_sharing": {
                "total": self.medical_total,
                "flagged_now": self.medical_flagged_now,
                "flagged_candidate": self.medical_flagged_candidate,
            },
            "newly_held_decisions": self.newly_held[:100],
            "skipped": self.skipped,
        }


def backtest(s: Session, *, current: Policy, candidate: Policy) -> BacktestReport:
    report = BacktestReport(
        current=f"{current.name} {current.version}",
        candidate=f"{candidate.name} {candidate.version}",
    )
    labels = human_resolutions(s)  # decision id -> what people concluded
    for d in iter_decisions(s):
        try:
            ctx = Context.parse(d.context)
            new = candidate.evaluate(
                {k: float(v) for k, v in d.scores.items()}, ctx, content_sha256=d.content_sha256
            )
        except Exception:  # noqa: BLE001 - a row the candidate cannot read is counted, not fatal
            report.skipped += 1
            continue
        report.decisions += 1
        report.transitions[(d.outcome, new.outcome)] += 1
        if d.queue:
            report.queue_volume_now[d.queue] += 1
        if new.queue:
            report.queue_volume_candidate[new.queue] += 1
        if new.outcome == "hold" and d.outcome != "hold":
            report.newly_held.append(d.id)
        label = labels.get(d.id)
        if label in _HUMAN_POSITIVE:
            report.human_violating += 1
            report.human_violating_allowed += new.outcome == "allow"
        elif label in _HUMAN_NEGATIVE:
            report.human_benign += 1
            report.human_benign_flagged += new.outcome != "allow"
            report.human_benign_held += new.outcome == "hold"
        if ctx.medical_sharing:
            report.medical_total += 1
            report.medical_flagged_now += d.outcome != "allow"
            report.medical_flagged_candidate += new.outcome != "allow"
    return report
