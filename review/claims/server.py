"""The claim inside PostgreSQL: `lookfirst_claim` (review/claims/function.py) leases, records
exposure and writes the audit events in one statement; here are its arguments, the statement
itself, and the reading of its answer into the same views and refusals as the Python path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

from review import audit
from review._core import Core, forget
from review.claims.function import ClaimOutcome
from review.claims.rules import claim_event_segments, exposure_cap_reached
from review.errors import ReviewError
from review.reads import assemble_views
from review.reviewers import no_queues, not_entitled, unknown_reviewer
from review.schema import ReviewItem
from review.values import ItemView

#: one claim in one statement; in autocommit it is its own transaction
STATEMENT = text(
    "SELECT * FROM lookfirst_claim(CAST(:reviewer AS text), CAST(:queue AS text), "
    "CAST(:item_id AS integer), CAST(:lim AS integer), CAST(:now AS timestamp), "
    "CAST(:until AS timestamp), CAST(:chain AS integer), CAST(:cfg_queues AS text[]), "
    "CAST(:cfg_roles AS text[]), CAST(:cfg_caps AS integer[]), CAST(:cfg_since AS timestamp[]), "
    "CAST(:audit AS text[]))"
)
#: the same statement in the driver's own parameter style (the claim desk sends it directly)
DRIVER_SQL = str(STATEMENT.compile(dialect=psycopg_dialect()))  # type: ignore[no-untyped-call]


def _naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None)


def _from_json(t: str | None) -> dt.datetime | None:
    """A timestamp as PostgreSQL's JSON writes it (ISO 8601, UTC, no offset)."""
    return None if t is None else dt.datetime.fromisoformat(t).replace(tzinfo=dt.UTC)


class ServerClaims:
    def __init__(self, core: Core) -> None:
        self.core = core
        config = core.config
        rules = list(config.queues.values())
        #: each queue's role, exposure cap and window, as the function takes them
        self._queues = list(config.queues)
        self._roles = [r.role for r in rules]
        self._caps = [r.exposure_cap for r in rules]
        self._spans = [r.exposure_span() for r in rules]

    def params(self, *, reviewer_id: str, queue: str | None, item_id: int | None, limit: int,
               now: dt.datetime, chain: int | None) -> dict[str, Any]:
        """The function's arguments (see `STATEMENT`); `chain`: the audit chain the caller's
        transaction already holds, if any."""
        return {
            "reviewer": reviewer_id, "queue": queue, "item_id": item_id, "lim": limit,
            "now": _naive_utc(now), "until": _naive_utc(now + self.core.config.lease),
            "chain": chain, "cfg_queues": self._queues, "cfg_roles": self._roles,
            "cfg_caps": self._caps,
            "cfg_since": [None if w is None else _naive_utc(now - w) for w in self._spans],
            "audit": list(claim_event_segments(now, reviewer_id)),
        }

    def lease(self, s: Session, *, reviewer_id: str, queue: str | None, item_id: int | None,
              limit: int, now: dt.datetime) -> list[ItemView]:
        """One claim attempt by the function, in the caller's transaction."""
        rows = s.execute(STATEMENT, self.params(
            reviewer_id=reviewer_id, queue=queue, item_id=item_id, limit=limit, now=now,
            chain=audit.held_chain(s))).all()
        views = self.views(rows, reviewer_id=reviewer_id, queue=queue)
        if views:
            # the function appended to this chain's head, which the transaction now holds
            audit.hold_chain(s, rows[0][2])
            forget(s, ReviewItem, [v.id for v in views])
        return views

    def views(self, rows: Sequence[Any], *, reviewer_id: str,
              queue: str | None) -> list[ItemView]:
        """What the reviewer sees of the items the function leased (empty: nothing to claim),
        or the refusal it answered, raised as the Python path raises it."""
        # (ord, outcome_code, chain, queue, item): SQLAlchemy rows or the driver's tuples
        if rows and rows[0][1] != ClaimOutcome.OK:
            code = rows[0][1]
            if code == ClaimOutcome.UNKNOWN_REVIEWER:
                raise unknown_reviewer(reviewer_id)
            if code == ClaimOutcome.NOT_ENTITLED:
                assert queue is not None
                raise not_entitled(self.core.config, reviewer_id, queue)
            if code == ClaimOutcome.NO_QUEUES:
                raise no_queues(reviewer_id)
            if code == ClaimOutcome.EXPOSURE_CAP:
                raise exposure_cap_reached(self.core.config, reviewer_id, rows[0][3])
            raise ReviewError(f"claim refused: {code}")  # pragma: no cover - no other codes
        items, decisions = [], {}
        verdicts: dict[int, list[Any]] = {}
        proposed: dict[str, set[str]] = {}
        appeals: dict[int, str] = {}
        for r in rows:
            i = r[4]
            items.append(SimpleNamespace(
                id=i["id"], decision_id=i["decision_id"], kind=i["kind"], queue=i["queue"],
                severity=i["severity"], priority=i["priority"], status=i["status"],
                reviewers_required=i["reviewers_required"], account_id=i["account_id"],
                content_sha256=i["content_sha256"], parent_item_id=i["parent_item_id"],
                claimed_by=i["claimed_by"], lease_expires_at=_from_json(i["lease_expires_at"]),
                due_at=_from_json(i["due_at"]), created_at=_from_json(i["created_at"])))
            decisions[i["decision_id"]] = SimpleNamespace(
                outcome=i["outcome"], scores=i["scores"], reasons=i["reasons"],
                context=i["context"])
            for v in i["verdicts"] or ():
                verdicts.setdefault(v["item_id"], []).append(SimpleNamespace(
                    reviewer_id=v["reviewer_id"], verdict=v["verdict"],
                    categories=v["categories"], note=v["note"],
                    created_at=_from_json(v["created_at"])))
            proposed[i["decision_id"]] = set(i["proposed"] or ())
            if i["appeal_statement"] is not None:
                appeals[i["id"]] = i["appeal_statement"]
        return assemble_views(items, decisions, verdicts, proposed, appeals, reviewer_id)
