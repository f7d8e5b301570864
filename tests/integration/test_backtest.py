"""`policy backtest` replays stored scores and contexts under a candidate policy."""

from __future__ import annotations

import datetime as dt
import hashlib

from pipeline.backtest import backtest
from pipeline.policy import POLICIES_DIR, Context, bundled_policy, policy_from_text
from pipeline.runtime import review_config
from pipeline.settings import Settings
from review.db import Database
from review.service import NewUpload, ReviewService, Routing


def _record(svc: ReviewService, db: Database, n: int, score: float, ctx: Context) -> str:
    policy = bundled_policy("default")
    sha = hashlib.sha256(f"c{n}".encode()).hexdigest()
    scores = {"nudity.explicit": score, "nudity.partial": 0.0, "skin.exposed": 0.0,
              "person.face": 0.0}
    d = policy.evaluate(scores, ctx, content_sha256=sha)
    with db.transaction() as s:
        rec = svc.record(
            s,
            NewUpload(account_id=f"a{n}", external_id=f"u{n}", source="test",
                      context=ctx.model_dump(), sha256=sha, mime="image/jpeg", width=1,
                      height=1, size_bytes=1),
            Routing(outcome=d.outcome, queue=d.queue, severity=d.severity, priority=d.priority,
                    reviewers_required=d.reviewers_required,
                    proposed_actions=tuple(d.proposed_actions), qa_sample=d.qa_sample,
                    scores=scores, reasons=d.reasons, model_version="m@sha256:0",
                    policy_version=policy.version),
        )
    return rec.decision_id


def test_backtest_counts_changes_and_human_labelled_errors(db: Database) -> None:
    policy = bundled_policy("default")
    svc = ReviewService(review_config(policy, Settings()),
                        clock=lambda: dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    with db.transaction() as s:
        svc.add_reviewer(s, reviewer_id="r1", queues=["adult", "medical"], roles=["medical"])
    plain = Context()
    medical = Context(medical_sharing=True)
    held = _record(svc, db, 1, 0.85, plain)  # hold under the default policy
    _record(svc, db, 2, 0.50, plain)  # review
    _record(svc, db, 3, 0.10, plain)  # allow
    _record(svc, db, 4, 0.85, medical)  # review in the medical queue, never held
    # a person decides the held one is benign
    with db.transaction() as s:
        item = svc.claim(s, reviewer_id="r1", queue="adult")
        assert item.decision_id == held
        svc.decide(s, item_id=item.id, reviewer_id="r1", verdict="benign")

    text = (POLICIES_DIR / "default.yaml").read_text()
    text = text.replace("thresholds: {review: 0.45, hold: 0.80}",
                        "thresholds: {review: 0.30, hold: 0.40}")
    candidate = policy_from_text(text.replace('version: "2026.11.0"', 'version: "2026.11.1"'))
    with db.transaction() as s:
        report = backtest(s, current=policy, candidate=candidate).as_dict()
    assert report["decisions"] == 4
    moves = {(t["now"], t["candidate"]): t["count"] for t in report["transitions"]}
    assert moves[("review", "hold")] == 1  # the 0.50 one would now be held
    assert moves[("hold", "hold")] == 1
    assert report["human_labels"] == {"violating": 0, "benign": 1, "violating_now_allowed": 0,
                                      "benign_now_flagged": 1, "benign_now_held": 1}
    # medical sharing still never holds automatically under the candidate
    assert report["medical_sharing"]["flagged_candidate"] == 1
    assert moves.get(("review", "review"), 0) == 1
