"""The claim component: leases handed out (by the Python path or by PostgreSQL's function),
renewed, released and returned when they run out, with the one sweep-then-try-again loop that
both the in-transaction claim and the claim desk go through."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import cast

from sqlalchemy import Integer, Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from review._core import SYSTEM, Core
from review.claims.explain import explain as explain_claim
from review.claims.local import LocalClaims
from review.claims.rules import check_claim_limit, nothing_claimed
from review.claims.server import ServerClaims
from review.errors import NoQueues, NotClaimant, NotFound, ReviewError
from review.reads import Reads
from review.reviewers import Reviewers
from review.schema import ReviewItem, VerdictRow
from review.states import ItemStatus
from review.values import ItemView

_ITEM = cast(Table, ReviewItem.__table__)
_EXPIRED = (
    select(_ITEM.c.id)
    .where(_ITEM.c.status == ItemStatus.CLAIMED, _ITEM.c.lease_expires_at <= bindparam("now"))
    .order_by(_ITEM.c.id)
    .limit(bindparam("lim", type_=Integer))
    .with_for_update(skip_locked=True)
)


class LeaseSweeper:
    """When the claim path returns expired leases: at most once per `every` while there is
    work to hand out, and always before a claim says there is none (a lease is minutes long;
    `lookfirst worker` sweeps too)."""

    def __init__(self, every: dt.timedelta) -> None:
        self.every = every
        self.last: dt.datetime | None = None

    def due(self, now: dt.datetime) -> bool:
        last = self.last
        return last is None or now >= last + self.every or now < last

    def mark(self, now: dt.datetime) -> None:
        """A sweep runs now (or has just run)."""
        self.last = now


class Claims:
    def __init__(self, core: Core, reviewers: Reviewers, reads: Reads, *,
                 in_server: bool = True) -> None:
        self.core = core
        #: PostgreSQL claims run inside the server (`lookfirst_claim`); False keeps them in
        #: Python, statement by statement, as on SQLite (the tests compare the two)
        self.in_server = in_server
        self.local = LocalClaims(core, reviewers, reads)
        self.server = ServerClaims(core)
        self.sweeper = LeaseSweeper(core.config.lease_sweep_every)

    # ---- claiming ------------------------------------------------------------------------
    def uses_server(self, dialect: str) -> bool:
        """Whether claims on this database run inside it (`lookfirst_claim`)."""
        return self.in_server and dialect == "postgresql"

    def lease(self, s: Session, *, reviewer_id: str, queue: str | None, item_id: int | None,
              limit: int, now: dt.datetime) -> list[ItemView]:
        """One claim attempt in the caller's transaction, without sweeps: the leased items'
        views, or [] when nothing is claimable."""
        path = self.server if self.uses_server(s.get_bind().dialect.name) else self.local
        return path.lease(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                          limit=limit, now=now)

    def with_sweeps(self, *, now: dt.datetime, reviewer_id: str, item_id: int | None,
                    lease: Callable[[], list[ItemView]],
                    sweep: Callable[[], int],
                    explain: Callable[[ReviewError], ReviewError] | None = None
                    ) -> list[ItemView]:
        """The one claim loop: return expired leases when a sweep is due, try `lease`; when
        it finds nothing, sweep (whatever the interval) and, if that returned any item, try
        once more; still nothing is `NothingToClaim` (`InvalidTransition` for a named item).
        `sweep` returns how many leases it returned; the caller decides the transactions.
        `explain` turns a refusal for finding nothing into one that says why (`explain.py`)."""
        if self.sweeper.due(now):
            self.sweeper.mark(now)
            sweep()
        try:
            views = lease()
            if not views:
                self.sweeper.mark(now)
                if sweep():
                    views = lease()
        except NoQueues as exc:
            raise (explain(exc) if explain else exc) from None
        if not views:
            refusal = nothing_claimed(reviewer_id, item_id)
            raise explain(refusal) if explain else refusal
        return views

    def explain(self, s: Session, *, reviewer_id: str, queue: str | None,
                item_id: int | None, refusal: ReviewError) -> ReviewError:
        """Why this reviewer's claim found nothing (see `review.claims.explain`)."""
        return explain_claim(s, self.core.config, reviewer_id=reviewer_id, queue=queue,
                             item_id=item_id, fallback=refusal)

    def claim_many(self, s: Session, *, reviewer_id: str, queue: str | None = None,
                   item_id: int | None = None, limit: int = 1) -> list[ItemView]:
        """Lease up to `limit` items in the caller's transaction, sweeps included."""
        check_claim_limit(limit)
        now = self.core.clock()
        return self.with_sweeps(
            now=now, reviewer_id=reviewer_id, item_id=item_id,
            lease=lambda: self.lease(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                                     limit=limit, now=now),
            sweep=lambda: len(self.expire_leases(s)),
            explain=lambda refusal: self.explain(s, reviewer_id=reviewer_id, queue=queue,
                                                 item_id=item_id, refusal=refusal),
        )

    # ---- leases ----------------------------------------------------------------------------
    def expire_leases(self, s: Session, *, limit: int = 100) -> list[int]:
        """Return items whose lease ran out to their queue, each with an audit event."""
        now = self.core.clock()
        expired: list[int] = list(s.execute(_EXPIRED, {"now": now, "lim": limit}).scalars())
        for item_id in expired:
            self._release(s, item_id, actor=SYSTEM, reason="lease_expired")
        return expired

    def renew(self, s: Session, *, item_id: int, reviewer_id: str) -> dt.datetime:
        core = self.core
        now = core.clock()
        until = now + core.config.lease
        row = s.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id, ReviewItem.status == ItemStatus.CLAIMED,
                   ReviewItem.claimed_by == reviewer_id, ReviewItem.lease_expires_at > now)
            .values(lease_expires_at=until, updated_at=now)
            .returning(ReviewItem.id)
            .execution_options(synchronize_session=False)
        ).first()
        if row is None:
            raise NotClaimant(f"review item {item_id} is not leased to {reviewer_id!r}")
        core.audit(s, actor=reviewer_id, event="item.renew", subject_type="review_item",
                   subject_id=item_id, data={"until": until.isoformat()})
        return until

    def release(self, s: Session, *, item_id: int, reviewer_id: str) -> None:
        item = s.get(ReviewItem, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if item.claimed_by != reviewer_id:
            raise NotClaimant(f"review item {item_id} is not leased to {reviewer_id!r}")
        self._release(s, item_id, actor=reviewer_id, reason="released")

    def _release(self, s: Session, item_id: int, *, actor: str, reason: str) -> ReviewItem:
        n = s.execute(
            select(func.count()).select_from(VerdictRow).where(VerdictRow.item_id == item_id)
        ).scalar_one()
        name = "release_second" if n else "release_first"
        return self.core.item_transition(
            s, item_id, name, actor=actor,
            values={"claimed_by": None, "lease_expires_at": None}, data={"reason": reason},
        )
