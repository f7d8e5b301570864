"""Context segments (`medical_sharing=true`, `audience=public`) and the false-positive rate
people see in each: of the uploads the policy flagged and a person decided, the share they
found benign.  The same segment names in `review stats`, on /metrics, in model comparisons and
in the policy's protected segments."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.orm import Session

from pipeline.policy import Context, segment_name
from pipeline.policy.context import CONTEXT_FIELDS
from review import FlaggedDecided, flagged_decided

#: the context fields whose every value is a segment: flags and choices (a few values each,
#: so they stay bounded as metric labels); counts such as account age are not segments
SEGMENT_FIELDS: Final[tuple[str, ...]] = tuple(
    name for name, spec in CONTEXT_FIELDS.items() if spec.kind in ("bool", "choice"))
#: how far back /metrics looks: a rate that moves when reviewers' findings move
METRICS_WINDOW: Final = dt.timedelta(days=30)


def field_values(name: str) -> tuple[Any, ...]:
    """Every value of a segment field, in a fixed order (so every series always exists)."""
    spec = CONTEXT_FIELDS[name]
    return (True, False) if spec.kind == "bool" else spec.choices


def all_segments() -> list[str]:
    """'all', then every value of every segment field."""
    return ["all"] + [segment_name(f, v) for f in SEGMENT_FIELDS for v in field_values(f)]


def normalised(context: Mapping[str, Any]) -> dict[str, Any]:
    """A stored or manifest context with the policy's defaults filled in (a row that does not
    say `medical_sharing` was not shared in a medical context), unknown fields left out."""
    known = {k: v for k, v in context.items() if k in CONTEXT_FIELDS and v is not None}
    try:
        return Context.parse(known).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - an odd stored context still belongs to segment "all"
        return {**Context().model_dump(mode="json"), **known}


def segments_of(context: Mapping[str, Any], *, fields: Iterable[str] = SEGMENT_FIELDS
                ) -> list[str]:
    """The segments one upload belongs to: 'all' and `field=value` for each field."""
    ctx = normalised(context)
    return ["all"] + [segment_name(f, ctx.get(f)) for f in fields]


@dataclass(frozen=True, slots=True)
class FalsePositiveRate:
    """Flagged uploads people decided in a segment (or queue), and how many were benign."""

    segment: str
    decided: int
    benign: int

    @property
    def rate(self) -> float | None:
        return self.benign / self.decided if self.decided else None

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "decided": self.decided, "benign": self.benign,
                "rate": None if self.rate is None else round(self.rate, 6)}


def false_positive_rates(rows: Sequence[FlaggedDecided]) -> list[FalsePositiveRate]:
    """Every segment of `all_segments()` (zeros where nothing was decided), from the grouped
    counts review keeps."""
    decided = dict.fromkeys(all_segments(), 0)
    benign = dict.fromkeys(all_segments(), 0)
    for r in rows:
        for seg in segments_of(r.context):
            if seg in decided:
                decided[seg] += r.decided
                benign[seg] += r.benign
    return [FalsePositiveRate(seg, decided[seg], benign[seg]) for seg in decided]


def false_positive_rates_by_queue(rows: Sequence[FlaggedDecided]) -> dict[str, FalsePositiveRate]:
    decided: dict[str, int] = {}
    benign: dict[str, int] = {}
    for r in rows:
        decided[r.queue] = decided.get(r.queue, 0) + r.decided
        benign[r.queue] = benign.get(r.queue, 0) + r.benign
    return {q: FalsePositiveRate(q, decided[q], benign[q]) for q in sorted(decided)}


def read_flagged(s: Session, *, since: dt.datetime | None) -> list[FlaggedDecided]:
    """The grouped counts, from the record (the caller's transaction)."""
    return flagged_decided(s, fields=SEGMENT_FIELDS, since=since)
