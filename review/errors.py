"""Errors of the review system of record; each has a stable `code` and a `kind`.

The kind is one of the words of `pipeline.errors.ErrorKind` (review may not import it): the
API maps it to an HTTP status, the CLI to an exit code; review knows neither.  The docstring is
the default message.
"""

from __future__ import annotations

from typing import ClassVar


class ReviewError(Exception):
    """The review operation was refused."""

    code: ClassVar[str] = "review.error"
    kind: ClassVar[str] = "conflict"

    # the same three lines as models.errors.CodedError: review may import neither models nor
    # pipeline, and the mission allows no fourth package to hold them once
    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or self.code).strip()
        super().__init__(self.detail)


class InvalidRequest(ReviewError):
    """The request is malformed or out of range."""

    code = "review.invalid"
    kind = "invalid"


class UnknownVerdict(InvalidRequest):
    """The verdict is not one of violating, benign, benign_medical, need_more_context."""

    code = "verdict.unknown"


class CategoriesRequired(InvalidRequest):
    """A 'violating' verdict must name the violated categories."""

    code = "verdict.categories_required"


class BulkNotAllowed(InvalidRequest):
    """This verdict or item is decided one by one, not in bulk."""

    code = "bulk.not_allowed"


class ClaimLimit(InvalidRequest):
    """A claim takes 1 to 50 items."""

    code = "claim.limit"


class NotFound(ReviewError):
    """No such record."""

    code = "review.not_found"
    kind = "not_found"


class InvalidTransition(ReviewError):
    """The record is not in a state that allows this step."""

    code = "review.invalid_transition"


class NotEntitled(ReviewError):
    """The reviewer is not entitled to this queue."""

    code = "review.not_entitled"
    kind = "forbidden"


class NoQueues(NotEntitled):
    """The reviewer may claim from no queue (none of theirs, or each needs a role they lack)."""


class UnknownReviewer(ReviewError):
    """The reviewer is not registered, or no longer active."""

    code = "review.unknown_reviewer"
    kind = "forbidden"


class UnknownQueue(ReviewError):
    """No queue of that name is defined by the policy."""

    code = "queue.unknown"
    kind = "invalid"


class FreshEyesRequired(ReviewError):
    """Appeals and escalations go to a reviewer who did not decide the original."""

    code = "review.fresh_eyes"
    kind = "forbidden"


class NotClaimant(ReviewError):
    """The item is not claimed by this reviewer (or the lease has expired)."""

    code = "review.not_claimant"


class AlreadyDecided(ReviewError):
    """This reviewer has already given a verdict on this item; a second one needs another person."""

    code = "review.already_decided"


class ExposureCapReached(ReviewError):
    """The reviewer has reached the exposure cap for this severe queue in the current shift."""

    code = "review.exposure_cap"
    kind = "limited"


class NothingToClaim(ReviewError):
    """No item is waiting in the reviewer's queues."""

    code = "review.queue_empty"
    kind = "not_found"


class ActionNotApproved(ReviewError):
    """The action has not been approved by the people it needs; nothing is executed."""

    code = "action.not_approved"


class ActionNotDue(ReviewError):
    """The action is approved but not due yet (notice period or appeal window still running)."""

    code = "action.not_due"


class AppealNotAllowed(ReviewError):
    """The decision cannot be appealed (nothing was done, or the appeal window has closed)."""

    code = "appeal.not_allowed"


class AuditChainBroken(ReviewError):
    """The audit chain does not verify."""

    code = "audit.chain_broken"
    kind = "check_failed"


class SameCredential(ReviewError):
    """This credential has already supplied a verdict on this item; a second verdict needs another
    person through their own credential (two people are two doors, not two names)."""

    code = "review.same_credential"
    kind = "forbidden"
