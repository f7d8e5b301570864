"""`lookfirst models compare`: a candidate model against the active one, before it decides
anything.

* **Recent traffic**: stored decisions in a window (by default since the candidate became a
  shadow, else the last 30 days; at most `limit` of them, the oldest first).  The active
  model's scores are the stored ones when the decision was made by it (else its model
  re-scores the stored original); the candidate's are the shadow scores stored with the
  decision (else it re-scores the original).  Each pair goes through the
  policy in force with the upload's own context (and its hash-bank match, as it was), so the
  comparison is of outcomes: how many change, per queue and per context segment, and, where
  people decided, how many benign uploads each would flag and how many violating ones each
  would allow.
* **An evaluation set** (optional, a labelled manifest's split, e.g. an exported dataset's
  `test`): both models scored, per category ROC AUC and precision/recall at the policy's
  thresholds, and benign images flagged per segment.
* **The protected segments** of the policy (`promotion`): the candidate's false-positive rate
  (benign uploads and images it would flag, traffic and evaluation set pooled) against the
  active one's; `models promote` refuses a candidate worse by more than the tolerance.

`pipeline.learning.report` writes it out (`compare.json`, and `report.md` with plots).  Nothing
is written to the record.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Scorer
from models.classifier.progress import NoProgress, Progress
from models.classifier.registry import Entry, ModelRegistry
from pipeline.blobs import BlobError
from pipeline.learning.errors import NoModelToCompare
from pipeline.learning.segments import SEGMENT_FIELDS, normalised, segments_of
from pipeline.policy import Context, Policy, PromotionRules
from pipeline.runtime import Runtime
from review import TrafficDecision, Verdict, iter_traffic

log = logging.getLogger(__name__)

ROLES = ("active", "candidate")
_NEGATIVE = frozenset({Verdict.BENIGN, Verdict.BENIGN_MEDICAL})
#: decisions read per comparison unless told otherwise
DEFAULT_LIMIT = 20_000
#: the traffic window of a candidate that is not a shadow, unless told otherwise
DEFAULT_WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class Contender:
    """One side of a comparison: a registered model and its scorer."""

    role: str
    entry: Entry
    scorer: Scorer

    @property
    def model_version(self) -> str:
        return self.entry.model_version

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.entry.ref, "model_version": self.entry.model_version,
                "status": self.entry.status}


def contenders(registry: ModelRegistry, *, candidate: str | None, active: str | None,
               threads: int = 0) -> tuple[Contender, Contender]:
    """(active, candidate): named, or the registry's active model and its one shadow."""
    if candidate is None:
        shadows = registry.shadows()
        if len(shadows) != 1:
            raise NoModelToCompare(
                "no shadow model to compare; name the candidate" if not shadows else
                "several shadow models (" + ", ".join(e.ref for e in shadows)
                + "); name the candidate")
        cand = shadows[0]
    else:
        cand = registry.resolve(candidate)
    if active is None:
        act = registry.active()
        if act is None:
            raise NoModelToCompare(f"no active model in {registry.root} to compare against")
    else:
        act = registry.resolve(active)
    if act.ref == cand.ref:
        raise NoModelToCompare(f"{cand.ref} is the active model; compare another one")
    return (Contender("active", act, registry.load(act.ref, threads=threads)),
            Contender("candidate", cand, registry.load(cand.ref, threads=threads)))


# ---- recent traffic -------------------------------------------------------------------------
@dataclass
class TrafficRow:
    decision_id: str
    segments: list[str]
    #: what people concluded (None: not decided)
    resolution: str | None
    outcome: dict[str, str] = field(default_factory=dict)
    queue: dict[str, str | None] = field(default_factory=dict)
    #: where each side's scores came from: stored, shadow or rescored
    source: dict[str, str] = field(default_factory=dict)


def _stored(d: TrafficDecision, c: Contender) -> Mapping[str, float] | None:
    if c.role == "active" and d.model_version == c.model_version:
        return d.scores
    for row in d.shadow_scores:
        if row.get("model_version") == c.model_version and not row.get("error"):
            return {k: float(v) for k, v in (row.get("scores") or {}).items()}
    if d.model_version == c.model_version:  # a candidate that was once active
        return d.scores
    return None


def replay_traffic(
    rt: Runtime,
    sides: Sequence[Contender],
    *,
    since: dt.datetime | None,
    until: dt.datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    extra_fields: Sequence[str] = (),
    batch_size: int = 32,
    progress: Progress | None = None,
) -> tuple[list[TrafficRow], Counter[str]]:
    """Every decision in the window replayed through the policy with each side's scores."""
    from models.classifier.data import decode_image

    progress = progress or NoProgress()
    with rt.db.transaction() as s:
        decisions = list(iter_traffic(s, since=since, until=until, limit=limit))
    fields = tuple(dict.fromkeys((*SEGMENT_FIELDS, *extra_fields)))
    skipped: Counter[str] = Counter()
    scores: dict[tuple[str, str], Mapping[str, float]] = {}
    todo: dict[str, list[TrafficDecision]] = {c.role: [] for c in sides}
    rescored: set[tuple[str, str]] = set()
    for d in decisions:
        for c in sides:
            got = _stored(d, c)
            if got is None:
                todo[c.role].append(d)
                rescored.add((d.decision_id, c.role))
            else:
                scores[(d.decision_id, c.role)] = got
    missing: set[str] = set()
    for c in sides:
        rows = todo[c.role]
        if rows:
            progress.start(f"rescore-{c.role}", f"re-scoring {len(rows)} originals with "
                           f"{c.entry.ref}", len(rows))
        for lo in range(0, len(rows), batch_size):
            chunk, images = [], []
            for d in rows[lo : lo + batch_size]:
                try:
                    images.append(decode_image(rt.blobs.get(d.content_sha256)))
                    chunk.append(d)
                except BlobError:
                    missing.add(d.decision_id)
                except Exception:  # noqa: BLE001 - an original that no longer decodes
                    log.warning("stored original does not decode",
                                extra={"sha256": d.content_sha256})
                    missing.add(d.decision_id)
            for d, r in zip(chunk, c.scorer.score(images) if images else [], strict=True):
                scores[(d.decision_id, c.role)] = r.scores
            progress.advance(f"rescore-{c.role}", len(rows[lo : lo + batch_size]))
    policy = rt.policy
    out: list[TrafficRow] = []
    for d in decisions:
        if d.decision_id in missing:
            skipped["original unavailable"] += 1
            continue
        try:
            ctx = Context.parse(normalised(d.context))
        except Exception:  # noqa: BLE001 - counted, not fatal
            skipped["unreadable context"] += 1
            continue
        row = TrafficRow(d.decision_id, segments_of(d.context, fields=fields), d.resolution)
        for c in sides:
            got = scores[(d.decision_id, c.role)]
            clean = {k: min(1.0, max(0.0, float(v))) for k, v in got.items()}
            decision = policy.evaluate(clean, ctx, content_sha256=d.content_sha256,
                                       bank_match=d.bank_match)
            row.outcome[c.role] = decision.outcome
            row.queue[c.role] = decision.queue
            row.source[c.role] = (
                "rescored" if (d.decision_id, c.role) in rescored
                else "stored" if d.model_version == c.model_version else "shadow")
        out.append(row)
    return out, skipped


def _pair(values: Sequence[int]) -> dict[str, int]:
    return dict(zip(ROLES, values, strict=True))


def summarise_traffic(rows: Sequence[TrafficRow]) -> dict[str, Any]:
    transitions = Counter((r.outcome["active"], r.outcome["candidate"]) for r in rows)
    queues = sorted({q for r in rows for q in r.queue.values() if q is not None})
    per_queue = {}
    for q in queues:
        a = sum(r.queue["active"] == q for r in rows)
        c = sum(r.queue["candidate"] == q for r in rows)
        per_queue[q] = {
            "active": a, "candidate": c,
            "moved_in": sum(r.queue["candidate"] == q != r.queue["active"] for r in rows),
            "moved_out": sum(r.queue["active"] == q != r.queue["candidate"] for r in rows),
        }
    segments: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(seg for r in rows for seg in r.segments):
        sel = [r for r in rows if name in r.segments]
        benign = [r for r in sel if r.resolution in _NEGATIVE]
        violating = [r for r in sel if r.resolution == Verdict.VIOLATING]
        segments[name] = {
            "n": len(sel),
            "changed": sum(r.outcome["active"] != r.outcome["candidate"] for r in sel),
            "now_allowed": sum(r.outcome["active"] != "allow" == r.outcome["candidate"]
                               for r in sel),
            "now_flagged": sum(r.outcome["active"] == "allow" != r.outcome["candidate"]
                               for r in sel),
            "flagged": _pair([sum(r.outcome[k] != "allow" for r in sel) for k in ROLES]),
            "benign": len(benign),
            "benign_flagged": _pair([sum(r.outcome[k] != "allow" for r in benign)
                                     for k in ROLES]),
            "violating": len(violating),
            "violating_allowed": _pair([sum(r.outcome[k] == "allow" for r in violating)
                                        for k in ROLES]),
        }
    sources = {k: dict(Counter(r.source[k] for r in rows)) for k in ROLES}
    return {
        "decisions": len(rows),
        "sources": sources,
        "changed": sum(r.outcome["active"] != r.outcome["candidate"] for r in rows),
        "transitions": [{"active": a, "candidate": c, "count": n}
                        for (a, c), n in sorted(transitions.items())],
        "queues": per_queue,
        "segments": segments,
    }


# ---- an evaluation set ----------------------------------------------------------------------
@dataclass
class EvaluationSet:
    data: Path
    split: str
    results: dict[str, dict[str, Any]]
    #: segment -> benign images, and how many each side flags
    segments: dict[str, dict[str, Any]]
    scored: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        per_category: dict[str, dict[str, Any]] = {}
        for role, r in self.results.items():
            for c, m in r["per_category"].items():
                per_category.setdefault(c, {})[role] = {
                    k: m[k] for k in ("roc_auc", "average_precision", "precision", "recall",
                                      "fpr")}
        return {
            "data": str(self.data), "split": self.split,
            "n": next(iter(self.results.values()))["n"],
            "macro_roc_auc": {k: r["macro"]["roc_auc"] for k, r in self.results.items()},
            "per_category": per_category,
            "segments": self.segments,
        }


def evaluate_both(
    policy: Policy,
    sides: Sequence[Contender],
    data: Path,
    *,
    split: str = "test",
    extra_fields: Sequence[str] = (),
    batch_size: int = 32,
    progress: Progress | None = None,
) -> EvaluationSet:
    from models.classifier.data import Manifest
    from models.classifier.evaluate import evaluate, fires, score_samples
    from models.errors import DatasetError
    from pipeline.policy_tools import thresholds_in_force

    samples = Manifest.load(data).split(split)
    if not samples:
        raise DatasetError(f"{data}: the {split!r} split is empty")
    cats = [c for c in sides[0].scorer.categories
            if c in policy.categories and all(c in s.scorer.categories for s in sides)]
    if not cats:
        raise DatasetError("the two models share no category of the policy")
    fields = tuple(dict.fromkeys((*SEGMENT_FIELDS, *extra_fields)))
    results, scored, flagged = {}, {}, {}
    for c in sides:
        ss = score_samples(c.scorer, samples, categories=cats,
                           thresholds=thresholds_in_force(policy), batch_size=batch_size,
                           split=split, progress=progress)
        scored[c.role] = ss
        results[c.role] = evaluate(ss)
        flagged[c.role] = np.asarray(fires(ss.scores, ss.thresholds).any(axis=1), dtype=bool)
    first = scored[sides[0].role]
    benign = first.labels.sum(axis=1) == 0
    names = [segments_of(ctx, fields=fields) for ctx in first.contexts]
    segments: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(n for row in names for n in row):
        mask = np.array([name in row for row in names], dtype=bool)
        b = mask & benign
        segments[name] = {
            "n": int(mask.sum()), "benign": int(b.sum()),
            "benign_flagged": {k: int((flagged[k] & b).sum()) for k in flagged},
        }
    return EvaluationSet(data, split, results, segments, scored)


# ---- the protected segments -----------------------------------------------------------------
@dataclass(frozen=True)
class SegmentCheck:
    segment: str
    #: benign uploads (traffic people decided) and images (evaluation set) in the segment
    benign: int
    benign_flagged: dict[str, int]
    tolerance: float
    evidence: dict[str, Any]

    def rate(self, role: str) -> float | None:
        return self.benign_flagged[role] / self.benign if self.benign else None

    @property
    def worse(self) -> bool:
        a, c = self.rate("active"), self.rate("candidate")
        return a is not None and c is not None and c > a + self.tolerance + 1e-12

    @property
    def judged(self) -> bool:
        return self.benign > 0

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "benign": self.benign,
                "benign_flagged": self.benign_flagged,
                "fpr": {k: None if self.rate(k) is None else round(self.rate(k) or 0.0, 6)
                        for k in ROLES},
                "tolerance": self.tolerance, "worse": self.worse, "judged": self.judged,
                "evidence": self.evidence}


@dataclass(frozen=True)
class ProtectedCheck:
    segments: tuple[SegmentCheck, ...]

    @property
    def passed(self) -> bool:
        return all(s.judged and not s.worse for s in self.segments)

    def problems(self) -> list[str]:
        out = []
        for s in self.segments:
            if not s.judged:
                out.append(f"{s.segment}: no benign upload or image to judge by")
            elif s.worse:
                out.append(
                    f"{s.segment}: the candidate would flag {s.benign_flagged['candidate']} "
                    f"of {s.benign} benign ({s.rate('candidate'):.1%}) where the active model "
                    f"flags {s.benign_flagged['active']} ({s.rate('active'):.1%}); the "
                    f"tolerance is {s.tolerance:.1%}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "problems": self.problems(),
                "segments": [s.as_dict() for s in self.segments]}


def check_protected(rules: PromotionRules, traffic: Mapping[str, Any] | None,
                    evaluation: Mapping[str, Any] | None) -> ProtectedCheck:
    """Pool the benign uploads people decided (traffic) and the benign images of the
    evaluation set in each protected segment; the candidate may flag a larger share of them
    than the active model by at most the tolerance."""
    out = []
    for name in rules.segment_names:
        evidence: dict[str, Any] = {}
        benign = 0
        flagged = dict.fromkeys(ROLES, 0)
        for source, segs in (("traffic", (traffic or {}).get("segments")),
                             ("evaluation", (evaluation or {}).get("segments"))):
            seg = (segs or {}).get(name)
            if seg is None:
                continue
            evidence[source] = {"benign": seg["benign"],
                                "benign_flagged": dict(seg["benign_flagged"])}
            benign += seg["benign"]
            for k in ROLES:
                flagged[k] += seg["benign_flagged"][k]
        out.append(SegmentCheck(name, benign, flagged, rules.fpr_tolerance, evidence))
    return ProtectedCheck(tuple(out))


# ---- the comparison -------------------------------------------------------------------------
@dataclass
class Comparison:
    active: Contender
    candidate: Contender
    since: dt.datetime | None
    until: dt.datetime | None
    traffic: dict[str, Any]
    evaluation: EvaluationSet | None
    protected: ProtectedCheck
    skipped: dict[str, int]
    policy: str

    def headline(self) -> dict[str, Any]:
        t = self.traffic
        h: dict[str, Any] = {
            "active": self.active.entry.ref, "candidate": self.candidate.entry.ref,
            "decisions": t["decisions"], "changed": t["changed"],
        }
        allseg = t["segments"].get("all")
        if allseg:
            h["flagged"] = allseg["flagged"]
            h["people_decided"] = allseg["benign"] + allseg["violating"]
            h["benign_flagged"] = allseg["benign_flagged"]
            h["violating_allowed"] = allseg["violating_allowed"]
            h["wrong"] = {k: allseg["benign_flagged"][k] + allseg["violating_allowed"][k]
                          for k in ROLES}
        if self.evaluation is not None:
            h["evaluation_macro_roc_auc"] = self.evaluation.as_dict()["macro_roc_auc"]
        h["protected"] = {s.segment: {"fpr": s.as_dict()["fpr"], "benign": s.benign,
                                      "worse": s.worse} for s in self.protected.segments}
        h["promotable"] = self.protected.passed
        h["text"] = headline_text(h)
        return h

    def as_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.as_dict(), "candidate": self.candidate.as_dict(),
            "policy": self.policy,
            "window": {"since": self.since.isoformat() if self.since else None,
                       "until": self.until.isoformat() if self.until else None},
            "headline": self.headline(),
            "traffic": self.traffic,
            "evaluation": self.evaluation.as_dict() if self.evaluation else None,
            "protected": self.protected.as_dict(),
            "skipped": self.skipped,
        }


def arrow(pair: Mapping[str, Any], fmt: str = "{}") -> str:
    def f(x: Any) -> str:
        return "–" if x is None else fmt.format(x)

    return f"{f(pair['active'])} → {f(pair['candidate'])}"


def headline_text(h: Mapping[str, Any]) -> str:
    parts = [f"{h['candidate']} against {h['active']}: {h['changed']} of {h['decisions']} "
             "recent outcomes change"]
    if "wrong" in h and h["people_decided"]:
        parts.append(f"where people decided ({h['people_decided']}), wrong outcomes "
                     f"{arrow(h['wrong'])} (benign flagged {arrow(h['benign_flagged'])}, "
                     f"violating allowed {arrow(h['violating_allowed'])})")
    for seg, p in h["protected"].items():
        parts.append(f"{seg}: benign flagged {arrow(p['fpr'], '{:.1%}')} of {p['benign']}")
    if "evaluation_macro_roc_auc" in h:
        parts.append(f"evaluation set macro ROC AUC "
                     f"{arrow(h['evaluation_macro_roc_auc'], '{:.3f}')}")
    parts.append("promotable" if h["promotable"] else "NOT promotable without --force")
    return "; ".join(parts)


def compare(
    rt: Runtime,
    registry: ModelRegistry,
    *,
    candidate: str | None = None,
    active: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    data: Path | None = None,
    split: str = "test",
    threads: int = 0,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Comparison:
    """Compare the candidate (default: the one shadow) with the active model."""
    act, cand = contenders(registry, candidate=candidate, active=active, threads=threads)
    if since is None and cand.entry.status == "shadow":
        since = registry.status_since(cand.entry.ref)
    if since is None:
        since = rt.review.clock() - DEFAULT_WINDOW
    rules = rt.policy.promotion
    extra = [f for f, _ in rules.protected_segments]
    rows, skipped = replay_traffic(rt, (act, cand), since=since, until=until, limit=limit,
                                   extra_fields=extra, batch_size=batch_size, progress=progress)
    traffic = summarise_traffic(rows)
    evaluation = (evaluate_both(rt.policy, (act, cand), data, split=split, extra_fields=extra,
                                batch_size=batch_size, progress=progress)
                  if data is not None else None)
    protected = check_protected(rules, traffic,
                                evaluation.as_dict() if evaluation is not None else None)
    return Comparison(act, cand, since, until, traffic, evaluation, protected, dict(skipped),
                      f"{rt.policy.name} {rt.policy.version}")
