"""What both claim paths (Python and PostgreSQL's `lookfirst_claim`) share: the batch limit,
the claim transition and its audit event, and the refusals a claim answers with."""

from __future__ import annotations

import datetime as dt
from typing import Any

from review import audit
from review.config import ReviewConfig
from review.errors import (
    ClaimLimit,
    ExposureCapReached,
    InvalidTransition,
    NothingToClaim,
    ReviewError,
)
from review.states import ITEM_TRANSITIONS

MAX_CLAIM_BATCH = 50
CLAIM = ITEM_TRANSITIONS["claim"]
#: the audit event of each claimed item (the claim function writes the same one)
CLAIM_EVENT = f"item.{CLAIM.name}"
CLAIM_SUBJECT = "review_item"


def claim_event_data() -> dict[str, Any]:
    return {"to": str(CLAIM.target)}


def claim_event(now: dt.datetime, reviewer_id: str, item_id: int) -> audit.NewEvent:
    return audit.NewEvent(now, reviewer_id, CLAIM_EVENT, CLAIM_SUBJECT, item_id,
                          claim_event_data())


def claim_event_segments(now: dt.datetime, reviewer_id: str) -> tuple[str, str, str]:
    """The claim event's canonical body around its sequence number and item id (which only
    the claim function knows), for `lookfirst_claim` to hash."""
    return audit.body_segments(at=now, actor=reviewer_id, event=CLAIM_EVENT,
                               subject_type=CLAIM_SUBJECT, data=claim_event_data())


def check_claim_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_CLAIM_BATCH:
        raise ClaimLimit(f"a claim takes 1 to {MAX_CLAIM_BATCH} items, not {limit}")


def nothing_claimed(reviewer_id: str, item_id: int | None) -> ReviewError:
    """The refusal for a claim that found nothing: a named item, or the whole queue."""
    if item_id is not None:
        return InvalidTransition(f"review item {item_id} cannot be claimed by {reviewer_id!r}")
    return NothingToClaim()


def exposure_cap_reached(config: ReviewConfig, reviewer_id: str, queue: str) -> ExposureCapReached:
    rules = config.rules(queue)
    return ExposureCapReached(
        f"reviewer {reviewer_id!r} has reviewed {rules.exposure_cap} items in severe "
        f"queue {queue!r} within {rules.exposure_window}; take a break or another queue"
    )
