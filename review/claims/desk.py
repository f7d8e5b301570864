"""The claim desk: claims for reviewer tools and the API, each claim its own transaction.

On PostgreSQL a claim is one statement, `lookfirst_claim`, run in autocommit: one round trip,
atomic on its own (lease, exposure, audit events and the rows of the reviewer's view), with no
BEGIN and COMMIT around it and no ORM session.  On SQLite, and when the service keeps claims in
Python, the desk runs one claim attempt in a transaction of its own.  Either way the claim goes
through the claim component's one sweep-then-try-again loop; leases that ran out are returned
in transactions of their own, so a refused claim does not undo the sweep.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy.exc import DBAPIError

from review.claims.rules import check_claim_limit
from review.claims.server import DRIVER_SQL
from review.db import Database
from review.errors import ReviewError
from review.values import ItemView

if TYPE_CHECKING:
    from review.service import ReviewService

log = logging.getLogger(__name__)


class ClaimDesk:
    """Hands out leases; every method is a whole unit of work (it commits)."""

    def __init__(self, db: Database, service: ReviewService) -> None:
        self.db = db
        self.claims = service.claims
        self.clock = service.clock

    def claim(self, *, reviewer_id: str, queue: str | None = None,
              item_id: int | None = None) -> ItemView:
        """The most urgent item the reviewer may take (or `item_id`), leased."""
        return self.claim_many(reviewer_id=reviewer_id, queue=queue, item_id=item_id)[0]

    def claim_many(self, *, reviewer_id: str, queue: str | None = None,
                   item_id: int | None = None, limit: int = 1) -> list[ItemView]:
        """Up to `limit` items, as `ReviewService.claim_many` leases them; `NothingToClaim`
        (or `InvalidTransition` for a named item) when there is none."""
        check_claim_limit(limit)
        now = self.clock()
        return self.claims.with_sweeps(
            now=now, reviewer_id=reviewer_id, item_id=item_id,
            lease=lambda: self._lease(reviewer_id, queue, item_id, limit, now),
            sweep=self._sweep,
            explain=lambda refusal: self._explain(reviewer_id, queue, item_id, refusal),
        )

    def _explain(self, reviewer_id: str, queue: str | None, item_id: int | None,
                 refusal: ReviewError) -> ReviewError:
        with self.db.transaction() as s:
            return self.claims.explain(s, reviewer_id=reviewer_id, queue=queue,
                                       item_id=item_id, refusal=refusal)

    def _sweep(self) -> int:
        with self.db.transaction() as s:
            return len(self.claims.expire_leases(s))

    def _lease(self, reviewer_id: str, queue: str | None, item_id: int | None, limit: int,
               now: dt.datetime) -> list[ItemView]:
        claims = self.claims
        if not claims.uses_server(self.db.engine.dialect.name):
            with self.db.transaction() as s:
                return claims.lease(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                                    limit=limit, now=now)
        params = claims.server.params(reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                                      limit=limit, now=now, chain=None)
        return claims.server.views(self._call(params), reviewer_id=reviewer_id, queue=queue)

    def _call(self, params: dict[str, Any]) -> list[Any]:
        """One statement, one transaction, sent on the driver's own connection: SQLAlchemy's
        statement and result handling cost as much client CPU as the rest of the claim
        (bench/claims_bench.py measures the claim as a whole).  Errors come out as SQLAlchemy's
        (`OperationalError` for a database that is down), as from any other statement.

        A connection that died while it sat in the pool fails before the statement runs: try
        once more on a fresh one.  (Had it died after the server committed, that lease simply
        runs out and returns the item.)"""
        for attempt in (1, 2):
            with self.db.autocommit() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, psycopg.Connection)
                try:
                    return raw.execute(DRIVER_SQL, params).fetchall()
                except psycopg.Error as exc:
                    lost = raw.closed or raw.broken
                    if lost:
                        conn.invalidate(exc)
                    err = DBAPIError.instance(DRIVER_SQL, params, exc, psycopg.Error,
                                              connection_invalidated=lost,
                                              dialect=conn.dialect)
                    if attempt == 2 or not lost:
                        raise err from exc
                    log.warning("claim: database connection lost, trying a fresh one")
        raise AssertionError("unreachable")  # pragma: no cover
