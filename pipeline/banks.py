"""The bank matcher: one per process, shared by the API, `lookfirst score`, the batch recorder
and the CLI.  It owns the PDQ index (`pipeline.hashing.index.PdqIndex`), built from the
database on first use and caught up incrementally before each lookup ("entries changed after
the last change I saw"), and answers, for an upload's sha256 and eight dihedral PDQ hashes,
the one bank entry that routes it: an exact sha256 entry or a PDQ entry within the Hamming
threshold, live (active, not expired) and applying to the uploader's account.  A violating
match wins over a clearance; among equals the nearest, then the oldest entry.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from pipeline.hashing.index import PdqIndex
from pipeline.hashing.pdq import DihedralPdq
from pipeline.policy import Policy
from pipeline.settings import Settings
from review import bank_changes_since, bank_lookup_sha256

__all__ = ["BankHit", "BankMatcher", "Query"]

log = logging.getLogger(__name__)

_PAGE = 50_000


@dataclass(frozen=True, slots=True)
class Query:
    """What an upload is matched by."""

    sha256: str
    account_id: str
    pdq: DihedralPdq | None = None


@dataclass(frozen=True, slots=True)
class BankHit:
    """The bank entry that routes an upload, and how near it is (0 for an exact sha256)."""

    bank: str
    entry_id: int
    kind: str
    distance: int
    source: str
    added_by: str
    added_at: str
    origin_item_id: int | None
    scope_account: str | None

    @property
    def summary(self) -> str:
        """One sentence for the statement of reasons."""
        day = self.added_at[:10]
        if self.bank == "cleared_benign":
            origin = f"item {self.origin_item_id}" if self.origin_item_id else self.source
            return f"cleared by a reviewer on {day} ({origin})"
        return (f"matches violating bank entry {self.entry_id} ({self.kind}, "
                f"{self.distance} bits apart; source {self.source!r}, added {day})")

    def as_reason(self) -> dict[str, Any]:
        return {"bank": self.bank, "entry_id": self.entry_id, "kind": self.kind,
                "distance": self.distance, "source": self.source, "added_by": self.added_by,
                "added_at": self.added_at, "origin_item_id": self.origin_item_id,
                "scope_account": self.scope_account, "summary": self.summary}


def _hit(entry: dict[str, Any], distance: int) -> BankHit:
    return BankHit(bank=entry["bank"], entry_id=int(entry["id"]), kind=entry["kind"],
                   distance=distance, source=entry["source"], added_by=entry["added_by"],
                   added_at=entry["added_at"], origin_item_id=entry["origin_item_id"],
                   scope_account=entry["scope_account"])


def _rank(h: BankHit) -> tuple[int, int, int]:
    return (0 if h.bank == "violating" else 1, h.distance, h.entry_id)


class BankMatcher:
    """The bank lookup of one process (thread-safe)."""

    def __init__(self, *, threshold: int = 31, quality_floor: int = 50,
                 exhaustive: bool = False, cross_account: bool = False) -> None:
        self.index = PdqIndex(threshold=threshold, quality_floor=quality_floor,
                              exhaustive=exhaustive)
        self.cross_account = cross_account
        self.quality_floor = quality_floor
        #: the live PDQ entries the index holds: id -> entry (as review returns it)
        self._entries: dict[int, dict[str, Any]] = {}
        self._seq = 0
        self._refresh = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, policy: Policy) -> BankMatcher:
        """The settings' threshold, floor and lookup; the policy's clearance scope."""
        return cls(threshold=settings.bank_pdq_threshold,
                   quality_floor=settings.bank_pdq_quality_floor,
                   exhaustive=settings.bank_pdq_exhaustive,
                   cross_account=policy.banks.clearance_scope == "global")

    @property
    def seq(self) -> int:
        return self._seq

    def refresh(self, s: Session) -> int:
        """Catch up with bank changes committed since the last refresh; returns how many."""
        with self._refresh:
            seen = 0
            while True:
                changes = bank_changes_since(s, self._seq, limit=_PAGE)
                add = [e for e in changes if e["state"] == "active" and e["kind"] == "pdq"]
                drop = [int(e["id"]) for e in changes
                        if e["state"] != "active" and e["kind"] == "pdq"]
                if drop:
                    self.index.remove_many(drop)
                    for i in drop:
                        self._entries.pop(i, None)
                if add:
                    self.index.add_many([int(e["id"]) for e in add],
                                        [e["value"] for e in add],
                                        [e["quality"] for e in add])
                    self._entries.update({int(e["id"]): e for e in add})
                if changes:
                    self._seq = int(changes[-1]["seq"])
                seen += len(changes)
                if len(changes) < _PAGE:
                    return seen

    def _applies(self, entry: dict[str, Any], account_id: str, at: dt.datetime) -> bool:
        if entry["state"] != "active":
            return False
        expires = entry.get("expires_at")
        if expires is not None and dt.datetime.fromisoformat(expires) <= at:
            return False
        scope = entry.get("scope_account")
        if scope is None or scope == account_id:
            return True
        # a violating entry scoped to one account is that account's own list
        return entry["bank"] == "cleared_benign" and self.cross_account

    def match_many(self, s: Session, queries: Sequence[Query], *, at: dt.datetime
                   ) -> list[BankHit | None]:
        """The entry that routes each upload (None: no bank matches it)."""
        if not queries:
            return []
        self.refresh(s)
        exact = bank_lookup_sha256(s, [q.sha256 for q in queries], at=at)
        out: list[BankHit | None] = []
        for q in queries:
            hits = [_hit(e, 0) for e in exact.get(q.sha256.lower(), [])
                    if self._applies(e, q.account_id, at)]
            if q.pdq is not None and q.pdq.quality >= self.quality_floor:
                for m in self.index.search_any(q.pdq.hashes, quality=q.pdq.quality):
                    entry = self._entries.get(m.entry_id)
                    if entry is not None and self._applies(entry, q.account_id, at):
                        hits.append(_hit(entry, m.distance))
            out.append(min(hits, key=_rank) if hits else None)
        return out

    def match(self, s: Session, query: Query, *, at: dt.datetime) -> BankHit | None:
        return self.match_many(s, [query], at=at)[0]
