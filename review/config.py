"""What the pipeline hands the review store about its queues, as plain data (review reads no
policy files): each queue's rules, and the service's timings and mappings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from review.errors import UnknownQueue
from review.states import ActionKind

#: a capped queue without a window of its own counts exposure over one shift
DEFAULT_EXPOSURE_WINDOW = dt.timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class QueueRules:
    name: str
    sla: dt.timedelta
    role: str | None = None
    reviewers_required: int = 1
    exposure_cap: int | None = None
    exposure_window: dt.timedelta | None = None
    escalate_to: str | None = None

    def exposure_span(self) -> dt.timedelta | None:
        """How far back a capped queue counts a reviewer's exposure (None: not capped)."""
        if self.exposure_cap is None:
            return None
        return self.exposure_window or DEFAULT_EXPOSURE_WINDOW


@dataclass(frozen=True)
class ReviewConfig:
    queues: Mapping[str, QueueRules]
    #: verdict + categories -> the actions a reviewer's verdict approves (the policy's mapping)
    actions_for_verdict: Callable[[str, Sequence[str]], Sequence[str]]
    appeals_queue: str = "appeals"
    escalation_queue: str = "senior"
    urgent_actions: frozenset[str] = frozenset({ActionKind.REPORT})
    lease: dt.timedelta = dt.timedelta(minutes=15)
    #: how far one point of priority brings an item forward in its queue's order
    priority_weight: dt.timedelta = dt.timedelta(minutes=10)
    appeal_window: dt.timedelta = dt.timedelta(days=180)
    notice_period: dt.timedelta = dt.timedelta(hours=72)
    #: how often the claim path itself returns expired leases (the worker sweeps too)
    lease_sweep_every: dt.timedelta = dt.timedelta(seconds=1)
    #: flood protection: a bank entry matching more uploads than this within the window is
    #: quarantined pending review
    bank_flood_limit: int = 1000
    bank_flood_window: dt.timedelta = dt.timedelta(hours=1)
    #: PDQ hashes at most this many bits apart show the same picture (clusters, overrules);
    #: below the quality floor a hash is noise
    pdq_threshold: int = 31
    pdq_quality_floor: int = 50

    def rules(self, queue: str) -> QueueRules:
        try:
            return self.queues[queue]
        except KeyError:
            raise UnknownQueue(f"unknown queue {queue!r}; the policy defines: "
                               f"{', '.join(sorted(self.queues))}") from None
