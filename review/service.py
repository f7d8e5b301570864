"""The review service: one set of rules behind the CLI, the API and the Label Studio sync.

`ReviewService` is a facade over the parts that hold the rules (reviewers, intake, reads,
claims, verdicts, actions, appeals, bulk), each built on the shared core (`review._core`).
Every method takes the caller's Session and never commits (the command, route or job owns the
transaction).  Every state change is an `UPDATE ... WHERE status IN (allowed) RETURNING` from
the transition table in `review.states`, and writes its audit event in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from review._core import SYSTEM, Core, utcnow
from review.actions import Actions
from review.appeals import Appeals
from review.bulk import BULK_GROUPS, BULK_KINDS, Bulk
from review.claims.leases import Claims
from review.claims.rules import MAX_CLAIM_BATCH
from review.config import DEFAULT_EXPOSURE_WINDOW, QueueRules, ReviewConfig
from review.intake import Intake
from review.reads import Reads
from review.reviewers import Reviewers
from review.schema import Action
from review.values import (
    DecideResult,
    ItemView,
    NewUpload,
    Recorded,
    Routing,
    action_dict,
)
from review.verdicts import Verdicts

# names callers imported from this module before it became a facade (prefer `review`)
__all__ = [
    "DEFAULT_EXPOSURE_WINDOW",
    "MAX_CLAIM_BATCH",
    "SYSTEM",
    "DecideResult",
    "ItemView",
    "NewUpload",
    "QueueRules",
    "Recorded",
    "ReviewConfig",
    "ReviewService",
    "Routing",
    "action_dict",
    "utcnow",
]


class ReviewService:
    """The review rules, as callers use them; each method hands over to the part that owns
    it (the parts are public attributes for the few callers that need one directly, such as
    the claim desk with `claims`)."""

    BULK_KINDS = BULK_KINDS
    BULK_GROUPS = BULK_GROUPS

    def __init__(self, config: ReviewConfig, *, clock: Callable[[], dt.datetime] = utcnow,
                 claims_in_server: bool = True) -> None:
        self.config = config
        self.clock = clock
        self.core = Core(config, clock)
        self.reviewers = Reviewers(self.core)
        self.actions = Actions(self.core)
        self.intake = Intake(self.core, self.actions)
        self.reads = Reads(self.core, self.reviewers, self.actions)
        #: PostgreSQL claims run inside the server unless `claims_in_server` is False (then
        #: in Python, statement by statement, as on SQLite; the tests compare the two)
        self.claims = Claims(self.core, self.reviewers, self.reads, in_server=claims_in_server)
        self.verdicts = Verdicts(self.core, self.reviewers, self.actions)
        self.appeals = Appeals(self.core)
        self.bulk = Bulk(self.core, self.reviewers, self.claims, self.verdicts)

    @property
    def claims_in_server(self) -> bool:
        return self.claims.in_server

    # ---- reviewers -----------------------------------------------------------------------
    def add_reviewer(self, s: Session, *, reviewer_id: str, queues: Sequence[str],
                     roles: Sequence[str] = (), display_name: str | None = None,
                     actor: str = SYSTEM) -> None:
        self.reviewers.add_reviewer(s, reviewer_id=reviewer_id, queues=queues, roles=roles,
                                    display_name=display_name, actor=actor)

    def grant(self, s: Session, *, reviewer_id: str, queues: Sequence[str] = (),
              roles: Sequence[str] = (), actor: str = SYSTEM) -> None:
        """More queues and/or roles for a registered reviewer (audited)."""
        self.reviewers.grant(s, reviewer_id=reviewer_id, queues=queues, roles=roles,
                             actor=actor)

    def revoke(self, s: Session, *, reviewer_id: str, queues: Sequence[str] = (),
               roles: Sequence[str] = (), actor: str = SYSTEM) -> None:
        """Take queues and/or roles away from a reviewer (audited)."""
        self.reviewers.revoke(s, reviewer_id=reviewer_id, queues=queues, roles=roles,
                              actor=actor)

    def deactivate_reviewer(self, s: Session, *, reviewer_id: str, actor: str = SYSTEM) -> None:
        """The reviewer may claim, see and decide nothing more (audited)."""
        self.reviewers.deactivate(s, reviewer_id=reviewer_id, actor=actor)

    def list_reviewers(self, s: Session, reviewer_id: str | None = None
                       ) -> list[dict[str, Any]]:
        """Reviewers with their roles, queues and what they can claim (`can_claim`, and
        `blocked`: their queues that need a role they lack)."""
        return self.reviewers.list_reviewers(s, reviewer_id)

    def entitled_queues(self, s: Session, reviewer_id: str) -> list[str]:
        """The queues a reviewer may claim, see and decide in: membership and the queue's role."""
        return self.reviewers.entitled_queues(s, reviewer_id)

    # ---- intake --------------------------------------------------------------------------
    def find_upload(self, s: Session, *, account_id: str, external_id: str) -> Recorded | None:
        return self.intake.find_upload(s, account_id=account_id, external_id=external_id)

    def find_uploads(self, s: Session, keys: Iterable[tuple[str, str]]
                     ) -> dict[tuple[str, str], Recorded]:
        """The decided uploads among `keys` ((account id, upload id) pairs), in one lookup."""
        return self.intake.find_uploads(s, keys)

    def record(self, s: Session, upload: NewUpload, routing: Routing) -> Recorded:
        """Store one upload and its decision; route it.  Exactly once per (account, upload id):
        a repeat returns the stored decision (the caller's transaction decides on the race)."""
        return self.intake.record(s, upload, routing)

    def record_many(self, s: Session, entries: Sequence[tuple[NewUpload, Routing]]
                    ) -> list[Recorded]:
        """`record` for a batch in one transaction: the same rows, audit events and outbox
        messages, one result per entry (a batch job's many decisions per transaction)."""
        return self.intake.record_many(s, entries)

    # ---- reading -------------------------------------------------------------------------
    def list_items(self, s: Session, *, viewer: str | None = None, queue: str | None = None,
                   statuses: Sequence[str] | None = None, limit: int = 100) -> list[ItemView]:
        return self.reads.list_items(s, viewer=viewer, queue=queue, statuses=statuses,
                                     limit=limit)

    def show(self, s: Session, item_id: int, *, viewer: str | None) -> ItemView:
        return self.reads.show(s, item_id, viewer=viewer)

    def record_reveal(self, s: Session, *, item_id: int, reviewer_id: str, reason: str,
                      credential: str | None = None, delegate: bool = False) -> None:
        """Seeing the original (unblurred) image is an audited act of an entitled reviewer; the
        event records the credential it came through (see `decide`)."""
        self.reads.record_reveal(s, item_id=item_id, reviewer_id=reviewer_id, reason=reason,
                                 credential=credential, delegate=delegate)

    def statement_of_reasons(self, s: Session, decision_id: str) -> dict[str, Any]:
        """One record a user notice or an auditor can read: detected, model, policy, context,
        who reviewed, what was decided, how to appeal."""
        return self.reads.statement_of_reasons(s, decision_id)

    def stats(self, s: Session) -> list[dict[str, Any]]:
        return self.reads.stats(s)

    # ---- claims and leases -----------------------------------------------------------------
    def claim(self, s: Session, *, reviewer_id: str, queue: str | None = None,
              item_id: int | None = None) -> ItemView:
        """Lease the most urgent item the reviewer may take (see `claim_many`); with `item_id`,
        that item or `InvalidTransition`."""
        return self.claim_many(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id)[0]

    def claim_many(self, s: Session, *, reviewer_id: str, queue: str | None = None,
                   item_id: int | None = None, limit: int = 1) -> list[ItemView]:
        """Lease up to `limit` of the most urgent items the reviewer may take: the earliest
        `rank_at` (the SLA deadline brought forward by severity-derived priority), then the
        oldest.  Each item gets its own lease and its own audit event; the whole batch costs
        one transaction (a reviewer's tool prefetching the next items).

        PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on or take the
        same row, all of it in one round trip (`lookfirst_claim`).  SQLite: the transaction
        already holds the single write lock, and the same rules run in Python."""
        return self.claims.claim_many(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                                      limit=limit)

    def expire_leases(self, s: Session, *, limit: int = 100) -> list[int]:
        """Return items whose lease ran out to their queue, each with an audit event."""
        return self.claims.expire_leases(s, limit=limit)

    def renew(self, s: Session, *, item_id: int, reviewer_id: str) -> dt.datetime:
        return self.claims.renew(s, item_id=item_id, reviewer_id=reviewer_id)

    def release(self, s: Session, *, item_id: int, reviewer_id: str) -> None:
        self.claims.release(s, item_id=item_id, reviewer_id=reviewer_id)

    # ---- verdicts --------------------------------------------------------------------------
    def decide(self, s: Session, *, item_id: int, reviewer_id: str, verdict: str,
               categories: Sequence[str] = (), note: str = "", credential: str | None = None,
               delegate: bool = False) -> DecideResult:
        """Record a verdict.  `credential` is the door it came through (`key:7`, `oidc:…`,
        `os:user@host`, `labelstudio:3`), `delegate` whether that door acts for the reviewer
        rather than being theirs.  In-process callers that name no credential are trusted
        code and get `direct:<reviewer_id>`.  One credential never supplies two verdicts of
        one item (`review.same_credential`, and UNIQUE(item_id, credential) in the database):
        the two-person rule needs two reviewers through two credentials."""
        return self.verdicts.decide(s, item_id=item_id, reviewer_id=reviewer_id,
                                    verdict=verdict, categories=categories, note=note,
                                    credential=credential, delegate=delegate)

    def decide_bulk(self, s: Session, *, item_id: int, reviewer_id: str, verdict: str,
                    categories: Sequence[str] = (), note: str = "", group: str = "sha256",
                    burst_window: dt.timedelta = dt.timedelta(hours=1),
                    limit: int = 200, credential: str | None = None,
                    delegate: bool = False) -> list[DecideResult]:
        """Decide `item_id` and every other open item of the same image (or the same
        account's burst) the reviewer could claim, with the same verdict (see
        `Bulk.decide_bulk`)."""
        return self.bulk.decide_bulk(s, item_id=item_id, reviewer_id=reviewer_id,
                                     verdict=verdict, categories=categories, note=note,
                                     group=group, burst_window=burst_window, limit=limit,
                                     credential=credential, delegate=delegate)

    # ---- actions ---------------------------------------------------------------------------
    def execute(self, s: Session, *, action_id: int, actor: str,
                credential: str | None = None, delegate: bool = False) -> Action:
        """Execute (or, for a reversal, reverse through) an approved, due action; the audit
        events record `credential` (the CLI's operator account) when the caller names one."""
        return self.actions.execute(s, action_id=action_id, actor=actor,
                                    credential=credential, delegate=delegate)

    def execute_due(self, s: Session, *, actor: str = SYSTEM, limit: int = 100) -> list[Action]:
        """Execute every approved action that is due and whose decision no one is reviewing."""
        return self.actions.execute_due(s, actor=actor, limit=limit)

    def list_actions(self, s: Session, *, status: str | None = None,
                     decision_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.actions.list_actions(s, status=status, decision_id=decision_id, limit=limit)

    # ---- the user's voice ------------------------------------------------------------------
    def appeal(self, s: Session, *, decision_id: str, statement: str,
               context: Mapping[str, Any] | None = None) -> int:
        return self.appeals.appeal(s, decision_id=decision_id, statement=statement,
                                   context=context)

    def provide_context(self, s: Session, *, decision_id: str, statement: str,
                        context: Mapping[str, Any] | None = None) -> int:
        """The user's reply to a notice or a request for context re-enters review before any
        action runs.  Returns the review item that will look at it."""
        return self.appeals.provide_context(s, decision_id=decision_id, statement=statement,
                                            context=context)
