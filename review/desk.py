"""The claim desk: claims for reviewer tools and the API, each claim its own transaction.

On PostgreSQL a claim is one statement, `lookfirst_claim` (migration 0008), run in autocommit:
one round trip, atomic on its own (lease, exposure, audit events and the rows of the
reviewer's view), with no BEGIN and COMMIT around it and no ORM session.  The rules are the
ones `ReviewService` applies; tests hold the paths to the same answers and the same rows.  On
SQLite, and for a reviewer id the function does not handle (`ReviewService.server_claims`),
the desk runs `ReviewService.lease` in a transaction of its own.

Leases that ran out are returned to their queues in a transaction of their own, at most once
per `lease_sweep_every` and again before the desk answers that there is nothing to claim, so a
refused claim does not undo the sweep.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import psycopg
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.exc import DBAPIError

from review.db import Database
from review.service import (
    CLAIM_IN_SERVER,
    ItemView,
    ReviewService,
    check_claim_limit,
    nothing_claimed,
)

log = logging.getLogger(__name__)


class ClaimDesk:
    """Hands out leases; every method is a whole unit of work (it commits)."""

    def __init__(self, db: Database, service: ReviewService) -> None:
        self.db = db
        self.service = service

    def claim(self, *, reviewer_id: str, queue: str | None = None,
              item_id: int | None = None) -> ItemView:
        """The most urgent item the reviewer may take (or `item_id`), leased."""
        return self.claim_many(reviewer_id=reviewer_id, queue=queue, item_id=item_id)[0]

    def claim_many(self, *, reviewer_id: str, queue: str | None = None,
                   item_id: int | None = None, limit: int = 1) -> list[ItemView]:
        """Up to `limit` items, as `ReviewService.claim_many` leases them; `NothingToClaim`
        (or `InvalidTransition` for a named item) when there is none."""
        check_claim_limit(limit)
        now = self.service.clock()
        if self.service.sweep_due(now):
            self._sweep(now, force=False)
        views = self._lease(reviewer_id, queue, item_id, limit, now)
        # before saying there is nothing, return leases that ran out and look again
        if not views and self._sweep(now, force=True):
            views = self._lease(reviewer_id, queue, item_id, limit, now)
        if not views:
            raise nothing_claimed(reviewer_id, item_id)
        return views

    def _sweep(self, now: dt.datetime, *, force: bool) -> int:
        with self.db.transaction() as s:
            return self.service.sweep_leases(s, now=now, force=force)

    def _lease(self, reviewer_id: str, queue: str | None, item_id: int | None, limit: int,
               now: dt.datetime) -> list[ItemView]:
        svc = self.service
        if not svc.server_claims(self.db.engine.dialect.name, reviewer_id):
            with self.db.transaction() as s:
                return svc.lease(s, reviewer_id=reviewer_id, queue=queue, item_id=item_id,
                                 limit=limit, now=now)
        params = svc.server_claim_params(reviewer_id=reviewer_id, queue=queue,
                                         item_id=item_id, limit=limit, now=now, chain=None)
        return svc.server_claim_views(self._call(params), reviewer_id=reviewer_id, queue=queue)

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
                    return raw.execute(_CLAIM_SQL, params).fetchall()
                except psycopg.Error as exc:
                    lost = raw.closed or raw.broken
                    if lost:
                        conn.invalidate(exc)
                    err = DBAPIError.instance(_CLAIM_SQL, params, exc, psycopg.Error,
                                              connection_invalidated=lost,
                                              dialect=conn.dialect)
                    if attempt == 2 or not lost:
                        raise err from exc
                    log.warning("claim: database connection lost, trying a fresh one")
        raise AssertionError("unreachable")  # pragma: no cover


#: the claim statement in the driver's own parameter style
_CLAIM_SQL = str(CLAIM_IN_SERVER.compile(
    dialect=psycopg_dialect()))  # type: ignore[no-untyped-call]
