"""Claims: who may take which review item, leases and their sweeps, by two paths held to the
same answers (Python statement by statement; PostgreSQL's `lookfirst_claim` in one round trip),
and the claim desk that runs each claim as a transaction of its own."""

from __future__ import annotations

from review.claims.desk import ClaimDesk
from review.claims.function import ClaimOutcome, render_claim_function
from review.claims.leases import Claims, LeaseSweeper
from review.claims.rules import MAX_CLAIM_BATCH, check_claim_limit, nothing_claimed

__all__ = [
    "MAX_CLAIM_BATCH",
    "ClaimDesk",
    "ClaimOutcome",
    "Claims",
    "LeaseSweeper",
    "check_claim_limit",
    "nothing_claimed",
    "render_claim_function",
]
