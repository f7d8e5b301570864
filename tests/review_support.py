"""A small review configuration, the hand-moved clock and helpers shared by the review tests
(no policy file)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

from review.db import Database
from review.service import NewUpload, QueueRules, Recorded, ReviewConfig, ReviewService, Routing

SEVERITY = {"cat.low": "low", "cat.high": "high", "cat.critical": "critical"}
ACTIONS = {
    "low": ["remove_content"],
    "high": ["remove_content", "suspend"],
    "critical": ["remove_content", "suspend", "terminate", "report"],
}
_RANK = ["low", "high", "critical"]


def actions_for_verdict(verdict: str, categories: Sequence[str]) -> list[str]:
    if verdict != "violating":
        return []
    worst = max((SEVERITY[c] for c in categories), key=_RANK.index)
    return list(ACTIONS[worst])


class FakeClock:
    """A clock the tests move by hand, so leases and windows expire without sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


H = dt.timedelta(hours=1)
QUEUES = {
    "adult": QueueRules("adult", 24 * H),
    "medical": QueueRules("medical", 12 * H, role="medical"),
    "severe": QueueRules("severe", 4 * H, role="senior", reviewers_required=2, exposure_cap=3,
                         exposure_window=8 * H, escalate_to="senior"),
    "senior": QueueRules("senior", 8 * H, role="senior"),
    "qa": QueueRules("qa", 72 * H),
    "appeals": QueueRules("appeals", 48 * H),
}


def make_config(**kw: object) -> ReviewConfig:
    base: dict[str, object] = dict(queues=QUEUES, actions_for_verdict=actions_for_verdict,
                                   appeals_queue="appeals", escalation_queue="senior")
    base.update(kw)
    return ReviewConfig(**base)  # type: ignore[arg-type]


def sha(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def upload(n: int | str, account: str = "acct-1", **ctx: object) -> NewUpload:
    return NewUpload(account_id=account, external_id=f"up-{n}", source="test", context=dict(ctx),
                     sha256=sha(n), mime="image/jpeg", width=10, height=10, size_bytes=100)


def routing(outcome: str = "review", queue: str | None = "adult", *, severity: str = "high",
            proposed: Sequence[str] = ("remove_content",), priority: int = 100,
            reviewers_required: int = 1, qa: bool = False) -> Routing:
    return Routing(outcome=outcome, queue=queue, severity=severity, priority=priority,
                   reviewers_required=reviewers_required,
                   proposed_actions=tuple(proposed) if outcome != "allow" else (),
                   qa_sample=qa, scores={"cat.high": 0.9}, reasons={"rules": []},
                   model_version="test-model@sha256:000000000000", policy_version="test-1")


def seed_reviewers(svc: ReviewService, s: object) -> None:
    from sqlalchemy.orm import Session

    assert isinstance(s, Session)
    svc.add_reviewer(s, reviewer_id="alice", queues=["adult", "qa", "appeals"])
    svc.add_reviewer(s, reviewer_id="bob", queues=["adult", "qa", "appeals"])
    svc.add_reviewer(s, reviewer_id="carol", queues=["adult", "appeals", "medical"],
                     roles=["medical"])
    svc.add_reviewer(s, reviewer_id="sam", queues=["severe", "senior", "appeals"],
                     roles=["senior"])
    svc.add_reviewer(s, reviewer_id="sue", queues=["severe", "senior", "appeals"],
                     roles=["senior"])
    svc.add_reviewer(s, reviewer_id="sid", queues=["severe", "senior"], roles=["senior"])


def record(svc: ReviewService, s: object, n: int | str, **kw: object) -> Recorded:
    from sqlalchemy.orm import Session

    assert isinstance(s, Session)
    account = str(kw.pop("account", "acct-1"))
    return svc.record(s, upload(n, account), routing(**kw))  # type: ignore[arg-type]


def record_many(svc: ReviewService, db: Database, names: list[str], **kw: Any) -> list[int]:
    """Record uploads `names` in one transaction; their review item ids, in order."""
    out = []
    with db.transaction() as s:
        for n in names:
            item = record(svc, s, n, **kw).item_id
            assert item is not None
            out.append(item)
    return out
