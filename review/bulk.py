"""Bulk review: one act of a reviewer over the open copies of an image, or over one account's
burst of uploads, each item claimed and decided as if one by one, in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from review import banks
from review._core import Core, credential_for
from review.claims.leases import Claims
from review.errors import (
    BulkNotAllowed,
    ExposureCapReached,
    InvalidRequest,
    InvalidTransition,
)
from review.reviewers import Reviewers
from review.schema import ReviewItem, VerdictRow
from review.states import CLAIMABLE, ItemKind, ItemStatus, Verdict
from review.values import DecideResult
from review.verdicts import Verdicts, parse_verdict

#: the kinds a bulk act may decide; appeals, escalations and context replies each carry a
#: person's own statement or a disagreement, and get a look of their own
BULK_KINDS = frozenset({ItemKind.INITIAL, ItemKind.QA})
BULK_GROUPS = frozenset({"sha256", "account_burst", "pdq"})


class Bulk:
    def __init__(self, core: Core, reviewers: Reviewers, claims: Claims,
                 verdicts: Verdicts) -> None:
        self.core = core
        self.reviewers = reviewers
        self.claims = claims
        self.verdicts = verdicts

    def decide_bulk(
        self,
        s: Session,
        *,
        item_id: int,
        reviewer_id: str,
        verdict: str,
        categories: Sequence[str] = (),
        note: str = "",
        group: str = "sha256",
        burst_window: dt.timedelta = dt.timedelta(hours=1),
        limit: int = 200,
        credential: str | None = None,
        delegate: bool = False,
    ) -> list[DecideResult]:
        """Decide `item_id` (whose lease the reviewer holds) and, in the same transaction,
        every other open item the reviewer could claim that shows the same image
        (group="sha256"), comes from the same account within `burst_window` of it
        (group="account_burst"), or is a near-duplicate in the same queue: its PDQ hash within
        the configured threshold of the item's (group="pdq", a cluster), with the same verdict.

        Each item goes through claim() and decide() as if done one by one: entitlement,
        exposure caps, the two-person rule (an item that needs two people gets this
        reviewer's one verdict and waits for a second person), an audit event per transition.
        One `bulk.decided` event lists what was decided and what was skipped (held by someone
        else, over the exposure cap, already carrying this reviewer's verdict or a verdict
        through the same `credential`).  Returns the
        anchor's result first, then the others by item id; at most `limit` items in all."""
        if group not in BULK_GROUPS:
            raise InvalidRequest(f"unknown bulk group {group!r}; one of "
                              f"{', '.join(sorted(BULK_GROUPS))}")
        v = parse_verdict(verdict, categories)
        if v == Verdict.NEED_MORE_CONTEXT:
            raise BulkNotAllowed("a request for the user's context is made item by item, "
                                 "not in bulk")
        if burst_window <= dt.timedelta(0):
            raise InvalidRequest("the burst window must be positive")
        if not 1 <= limit <= 1000:
            raise InvalidRequest("a bulk act decides between 1 and 1000 items")
        now = self.core.clock()
        anchor = self.verdicts.locked_item(s, item_id)
        # decide's own checks, before anything moves: entitlement, verdict, lease
        self.verdicts.check(s, anchor, reviewer_id=reviewer_id, verdict=verdict,
                            categories=categories, now=now, credential=credential)
        if anchor.kind not in BULK_KINDS:
            raise BulkNotAllowed(f"review item {item_id} is a {anchor.kind} item; appeals, "
                              "escalations and context replies are decided one by one")
        entitled = self.reviewers.entitled_queues(s, reviewer_id)
        if group == "sha256":
            same = [ReviewItem.content_sha256 == anchor.content_sha256]
            key = anchor.content_sha256
        elif group == "pdq":
            cfg = self.core.config
            cluster = banks.cluster(s, anchor, threshold=cfg.pdq_threshold,
                                    quality_floor=cfg.pdq_quality_floor)
            same = [ReviewItem.queue == anchor.queue, ReviewItem.content_sha256.in_(cluster)]
            key = anchor.content_sha256
        else:
            same = [ReviewItem.account_id == anchor.account_id,
                    ReviewItem.created_at >= anchor.created_at - burst_window,
                    ReviewItem.created_at <= anchor.created_at + burst_window]
            key = anchor.account_id
        results = [self.verdicts.decide(s, item_id=item_id, reviewer_id=reviewer_id,
                                        verdict=verdict, categories=categories, note=note,
                                        credential=credential, delegate=delegate)]
        candidates = s.execute(
            select(ReviewItem.id, ReviewItem.status)
            .where(
                ReviewItem.id != item_id,
                ReviewItem.kind.in_(BULK_KINDS),
                ReviewItem.queue.in_(entitled),
                or_(ReviewItem.status.in_(CLAIMABLE),
                    (ReviewItem.status == ItemStatus.CLAIMED)
                    & (ReviewItem.claimed_by == reviewer_id)
                    & (ReviewItem.lease_expires_at > now)),
                *same,
            )
            .order_by(ReviewItem.id)
            .limit(limit - 1)
        ).all()
        door = credential_for(reviewer_id, credential)
        through_door = set(s.execute(
            select(VerdictRow.item_id).where(
                VerdictRow.item_id.in_([c[0] for c in candidates]),
                VerdictRow.credential == door)
        ).scalars()) if candidates else set()
        skipped: list[int] = []
        for other_id, status in candidates:
            if other_id in through_door:  # the same door never supplies two verdicts of one item
                skipped.append(other_id)
                continue
            if status != ItemStatus.CLAIMED:
                try:  # the claim's own rules: SKIP LOCKED, two people, exposure caps
                    self.claims.claim_many(s, reviewer_id=reviewer_id, item_id=other_id)
                except (InvalidTransition, ExposureCapReached):
                    skipped.append(other_id)
                    continue
            results.append(self.verdicts.decide(s, item_id=other_id, reviewer_id=reviewer_id,
                                                verdict=verdict, categories=categories,
                                                note=note, credential=credential,
                                                delegate=delegate))
        self.core.audit(
            s, actor=reviewer_id, event="bulk.decided", subject_type="review_item",
            subject_id=item_id,
            data={"group": group, "key": key, "verdict": str(v),
                  "categories": sorted(set(categories)),
                  "window_s": burst_window.total_seconds() if group == "account_burst" else None,
                  "items": [r.item_id for r in results], "skipped": skipped},
        )
        return results
