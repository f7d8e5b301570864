"""`lookfirst dataset export`: what reviewers concluded becomes a labelled dataset.

One row per content (sha256), from the uploads of it that people decided:

* **labels**: the latest decided review wins (an escalation over the item it took over, an
  upheld appeal over the verdict it overturned); `violating` gives the categories its
  verdicts named, `benign` and `benign_medical` give `[]` (negatives); a content whose only
  word is `need_more_context`, or that no review decided, is left out.
* **context**: the context of the upload whose review won (what the uploader told us).
* **provenance**: the decision, upload, review item and verdict ids behind the row (every
  verdict on every upload of it, and the deciding ones apart), how many reviewers and
  verdicts there were and how far they agreed.  No reviewer or account ids.

The images are copies of the originals from the blob store (`images/SHA256.EXT`, readable by
the owner only), never previews: training needs the pixels reviewers decided on.  Exporting
them is an audited act: an event in review's audit chain names the operator, the row count
and the manifest's sha256.

**Split.** Rows are grouped into clusters that must not straddle a split: the same content
(one row already) and near-duplicates.  Two contents are near-duplicates when any of the eight
dihedral PDQ hashes of one (the picture as it is, mirrored, turned by quarter turns) is at
most 31 bits (Meta's match threshold) from the other's original hash: a mirrored or turned
copy of a training image does not land in the test split.  That is the banks' rule, and the
lookup is theirs (`PdqIndex.search_any` over an exhaustive index, which misses nothing within
the threshold); images whose quality is under the floor (flat ones, whose hash is noise) pair
with nothing.  Clusters are the connected components of the near-duplicate pairs.  A
cluster's split is fixed by its key (the smallest sha256 in it):
`u = int(sha256("lookfirst.split:" + key)[:16], 16) / 2**64` falls into train, val, calib
or test by cumulative shares (default 60/15/10/15), so an export repeated over more data
keeps every old row where it was, unless a new near-duplicate joins its cluster with a
smaller key.  `near_duplicates` is the hook for another finder.

*Where the hashes come from.*  Ingest stores one hash per content (`Content.pdq`, the original
orientation), not the other seven, and the dihedral hashes need the pixels; so the export
decodes each exported image (it holds the sha256-verified bytes anyway) the way ingest does,
and computes all eight in one pass (about the cost of one hash).  The index holds these
recomputed originals, not the stored ones, so that every hash an export compares comes from
the same decoder and hasher: a content hashed before the hasher changed (the 512 px reduction)
would otherwise be compared a few bits off.  The stored hash is the cross-check: it should be
the recomputed original exactly; a content whose stored hash is beyond the threshold from it
is logged as a warning (the hasher or decoder changed in a way that moves hashes, and the
banks' entries made from stored hashes deserve a look).  A content ingest did not hash is
hashed here like any other.  Storing all eight hashes at ingest instead would take a
migration and 224 more bytes a content to spare a decode that the export, which copies every
image anyway, can afford (about 5 ms a photo at 512 px).

Files: `manifest.jsonl` (models/classifier/data.py reads it), `dataset.json` (what was
exported, counts, the split rule, the manifest's sha256), `images/`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from pipeline.auth.operator import Operator, current
from pipeline.blobs import BlobError, BlobStore
from pipeline.hashing.pdq import MATCH_THRESHOLD, Pdq, hamming
from pipeline.learning.errors import ExportTargetNotEmpty, NothingToExport
from pipeline.runtime import Runtime
from review import ReviewedDecision, ReviewedItem, Verdict, append_audit_event, reviewed_decisions

log = logging.getLogger(__name__)

MANIFEST: Final = "manifest.jsonl"
INFO: Final = "dataset.json"
FORMAT: Final = "lookfirst.dataset"
FORMAT_VERSION: Final = 1
SPLIT_ORDER: Final = ("train", "val", "calib", "test")
DEFAULT_SHARES: Final[Mapping[str, float]] = {"train": 0.6, "val": 0.15, "calib": 0.1,
                                              "test": 0.15}
_EXT: Final = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
_CONCLUSIVE: Final = frozenset({Verdict.VIOLATING, Verdict.BENIGN, Verdict.BENIGN_MEDICAL})
_NEGATIVE: Final = frozenset({Verdict.BENIGN, Verdict.BENIGN_MEDICAL})

#: near-duplicate finder: the exported images (sha256 -> file) and the PDQ hashes ingest stored
#: for them (sha256 -> hash, where it stored one) -> pairs of sha256 that are the same picture
NearDuplicates = Callable[[Mapping[str, Path], Mapping[str, Pdq]], Iterable[tuple[str, str]]]


# ---- labels from verdicts -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Resolved:
    """What people last concluded about one upload, and the review that concluded it."""

    decision: ReviewedDecision
    item: ReviewedItem
    resolution: str
    labels: tuple[str, ...]


def resolve(decision: ReviewedDecision) -> Resolved | None:
    """The latest decided review's conclusion (None: nothing conclusive was decided)."""
    decided = [it for it in decision.items
               if it.status == "decided" and it.resolution in _CONCLUSIVE
               and it.resolved_at is not None]
    if not decided:
        return None
    last = max(decided, key=lambda it: (it.resolved_at, it.id))
    assert last.resolution is not None
    labels: tuple[str, ...] = ()
    if last.resolution == Verdict.VIOLATING:
        # the verdicts that decided it agreed on violating; the categories any of them named
        labels = tuple(sorted({c for v in last.verdicts if v.verdict == Verdict.VIOLATING
                               for c in v.categories}))
    return Resolved(decision, last, last.resolution, labels)


@dataclass
class Row:
    """One row of the manifest: one content."""

    sha256: str
    mime: str
    labels: tuple[str, ...]
    resolution: str
    context: Mapping[str, Any]
    provenance: dict[str, Any]
    cluster: str = ""
    split: str = ""
    #: the PDQ hash ingest stored for the content (None: not hashed); not in the manifest
    stored_pdq: Pdq | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return f"images/{self.sha256}.{_EXT.get(self.mime, 'img')}"

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "labels": list(self.labels), "split": self.split,
                "context": dict(self.context), "id": self.sha256, "sha256": self.sha256,
                "cluster": self.cluster, "provenance": self.provenance}


def _polarity(verdict: str) -> str:
    return "negative" if verdict in _NEGATIVE else "positive"


def build_rows(decisions: Sequence[ReviewedDecision]) -> tuple[list[Row], Counter[str]]:
    """One row per content from the reviewed decisions; and what was left out, by reason."""
    skipped: Counter[str] = Counter()
    by_content: dict[str, list[tuple[ReviewedDecision, Resolved | None]]] = {}
    for d in decisions:
        by_content.setdefault(d.content_sha256, []).append((d, resolve(d)))
    rows: list[Row] = []
    for sha, group in sorted(by_content.items()):
        resolved = [r for _, r in group if r is not None]
        if not resolved:
            skipped["no conclusive verdict"] += 1
            continue
        # the latest conclusion about this content, whichever upload of it it came from
        win = max(resolved, key=lambda r: (r.item.resolved_at, r.item.id))
        verdicts = [v for d, _ in group for it in d.items for v in it.verdicts]
        conclusive = [v for v in verdicts if v.verdict in _CONCLUSIVE]
        agree = sum(_polarity(v.verdict) == _polarity(win.resolution) for v in conclusive)
        assert win.item.resolved_at is not None
        provenance = {
            "resolution": win.resolution,
            "decided_by": {
                "decision_id": win.decision.decision_id,
                "item_id": win.item.id,
                "item_kind": win.item.kind,
                "resolved_at": win.item.resolved_at.isoformat(),
                "verdict_ids": [v.id for v in win.item.verdicts],
            },
            "decision_ids": sorted(d.decision_id for d, _ in group),
            "upload_ids": sorted(d.upload_id for d, _ in group),
            "item_ids": sorted(it.id for d, _ in group for it in d.items),
            "verdict_ids": sorted(v.id for v in verdicts),
            "reviewers": len({v.reviewer_id for v in verdicts}),
            "verdicts": len(conclusive),
            "agreement": round(agree / len(conclusive), 4) if conclusive else None,
        }
        rows.append(Row(sha256=sha, mime=win.decision.mime, labels=win.labels,
                        resolution=win.resolution, context=dict(win.decision.context),
                        provenance=provenance, stored_pdq=_stored_pdq(win.decision)))
    return rows, skipped


def _stored_pdq(d: ReviewedDecision) -> Pdq | None:
    if d.content_pdq is None or d.content_pdq_quality is None:
        return None
    return Pdq.from_hex(d.content_pdq, d.content_pdq_quality)


# ---- the split ------------------------------------------------------------------------------
def check_shares(shares: Mapping[str, float]) -> dict[str, float]:
    """The four shares in split order; each within [0, 1], summing to 1."""
    from models.errors import InvalidArgument

    out = {s: float(shares.get(s, 0.0)) for s in SPLIT_ORDER}
    if set(shares) - set(SPLIT_ORDER):
        raise InvalidArgument(f"split shares are for {', '.join(SPLIT_ORDER)} only")
    if any(not 0.0 <= v <= 1.0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise InvalidArgument(f"split shares must be within [0, 1] and sum to 1, not {out}")
    return out


def split_of(key: str, shares: Mapping[str, float]) -> str:
    """The split of a cluster, fixed by its key (see the module docstring)."""
    u = int(hashlib.sha256(f"lookfirst.split:{key}".encode()).hexdigest()[:16], 16) / 2**64
    edge = 0.0
    for name in SPLIT_ORDER:
        edge += shares[name]
        if u < edge:
            return name
    return SPLIT_ORDER[-1]


def clusters(keys: Sequence[str], pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """key -> its cluster's key (the smallest key among the pairs' connected components)."""
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in pairs:
        if a in parent and b in parent:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the root is always the smallest key
    return {k: find(k) for k in keys}


def pdq_near_duplicates(
    images: Mapping[str, Path], stored: Mapping[str, Pdq] | None = None
) -> list[tuple[str, str]]:
    """Pairs of images (sorted, each pair smaller sha256 first) where a dihedral hash of one is
    within the match threshold of the other's original hash (see the module docstring);
    `stored`: the hashes ingest stored, checked against the recomputed ones.  Exhaustive
    lookup, so none within the threshold is missed; images under the quality floor pair with
    nothing.  One image in memory at a time; 256 bytes kept per image."""
    from pipeline.hashing.index import PdqIndex
    from pipeline.ingest import ingest_bytes, with_pdq

    keys = list(images)
    if not keys:
        return []
    stored = stored or {}
    dihedral = []
    drifted = 0
    for k in keys:
        data = images[k].read_bytes()
        # ingest's own decode (EXIF orientation, alpha over white) and hasher: the stored hash
        # came from them.  The content passed ingest's limits once; Pillow's still apply.
        pdq = with_pdq(ingest_bytes(data, max_bytes=max(1, len(data)),
                                    max_pixels=sys.maxsize)).pdq
        assert pdq is not None
        dihedral.append(pdq)
        old = stored.get(k)
        if old is not None and hamming(old.hash, pdq.original.hash) > MATCH_THRESHOLD:
            drifted += 1
            log.warning("stored PDQ hash is far from the exported image's",
                        extra={"sha256": k, "distance": hamming(old.hash, pdq.original.hash)})
    if drifted:
        log.warning("stored PDQ hashes disagree with the recomputed ones",
                    extra={"contents": drifted, "of": len(keys)})
    index = PdqIndex(exhaustive=True)
    index.add_many(np.arange(len(keys), dtype=np.int64), [d.hashes[0] for d in dihedral],
                   [d.quality for d in dihedral])
    pairs: set[tuple[str, str]] = set()
    for i, d in enumerate(dihedral):
        # nothing when d is under the floor; entries under it were never indexed
        for m in index.search_any(d.hashes, quality=d.quality):
            if m.entry_id != i:
                a, b = keys[i], keys[m.entry_id]
                pairs.add((a, b) if a < b else (b, a))
    return sorted(pairs)


# ---- the export -----------------------------------------------------------------------------
@dataclass
class ExportResult:
    directory: Path
    manifest: Path
    manifest_sha256: str
    rows: int
    splits: dict[str, int]
    labels: dict[str, int]
    clusters: int
    #: clusters of more than one content (near-duplicates kept together)
    near_duplicate_clusters: int
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "manifest": str(self.manifest),
                "manifest_sha256": self.manifest_sha256, "rows": self.rows,
                "splits": self.splits, "labels": self.labels, "clusters": self.clusters,
                "near_duplicate_clusters": self.near_duplicate_clusters,
                "skipped": self.skipped}


def _copy_images(rows: list[Row], blobs: BlobStore, images_dir: Path,
                 skipped: Counter[str]) -> dict[str, Path]:
    kept: dict[str, Path] = {}
    for r in rows:
        try:
            data = blobs.get(r.sha256)  # verified against its sha256
        except BlobError as exc:
            log.warning("reviewed content not in the blob store",
                        extra={"sha256": r.sha256, "error": exc.code})
            skipped[f"original unavailable ({exc.code})"] += 1
            continue
        target = images_dir / Path(r.path).name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        kept[r.sha256] = target
    return kept


def export_dataset(
    rt: Runtime,
    out_dir: Path,
    *,
    since: dt.datetime | None = None,
    shares: Mapping[str, float] = DEFAULT_SHARES,
    near_duplicates: NearDuplicates = pdq_near_duplicates,
    operator: Operator | None = None,
) -> ExportResult:
    """Write the labelled dataset of everything people decided (since `since`) into `out_dir`
    (new or empty), and audit it.  The directory appears whole or not at all."""
    split_shares = check_shares(shares)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportTargetNotEmpty(f"{out_dir} exists and is not empty")
    with rt.db.transaction() as s:
        decisions = reviewed_decisions(s, since=since)
    rows, skipped = build_rows(decisions)
    if not rows:
        raise NothingToExport(
            "no reviewed upload has a conclusive decided verdict"
            + (f" since {since.isoformat()}" if since else ""))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.incoming."))
    try:
        images_dir = staging / "images"
        images_dir.mkdir(mode=0o700)
        kept = _copy_images(rows, rt.blobs, images_dir, skipped)
        rows = [r for r in rows if r.sha256 in kept]
        if not rows:
            raise NothingToExport("none of the reviewed content is in the blob store")
        stored = {r.sha256: r.stored_pdq for r in rows if r.stored_pdq is not None}
        cluster_of = clusters([r.sha256 for r in rows], near_duplicates(kept, stored))
        for r in rows:
            r.cluster = cluster_of[r.sha256]
            r.split = split_of(r.cluster, split_shares)
        text = "".join(json.dumps(r.as_json(), sort_keys=True) + "\n" for r in rows)
        manifest_sha = hashlib.sha256(text.encode()).hexdigest()
        (staging / MANIFEST).write_text(text, encoding="utf-8")
        sizes = Counter(cluster_of.values())
        result = ExportResult(
            directory=out_dir, manifest=out_dir / MANIFEST, manifest_sha256=manifest_sha,
            rows=len(rows), splits={s: sum(r.split == s for r in rows) for s in SPLIT_ORDER},
            labels=dict(sorted(Counter(c for r in rows for c in r.labels).items())),
            clusters=len(sizes), near_duplicate_clusters=sum(n > 1 for n in sizes.values()),
            skipped=dict(skipped),
        )
        op = operator or current()
        now = rt.review.clock()
        info = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "exported_at": now.isoformat(), "exported_by": op.credential,
            "since": since.isoformat() if since else None,
            "policy": {"name": rt.policy.name, "version": rt.policy.version},
            **result.as_dict(),
            "negatives": sum(not r.labels for r in rows),
            "split_rule": {"shares": split_shares, "cluster": "same sha256, or a dihedral "
                           "PDQ hash (flips, quarter turns) of one within 31 bits of the "
                           "other's (connected components)", "key": "smallest sha256 of the "
                           "cluster", "bucket": "int(sha256('lookfirst.split:' + key)[:16], "
                           "16) / 2**64 against the cumulative shares"},
        }
        info["directory"] = str(out_dir)
        info["manifest"] = MANIFEST
        (staging / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        # audited in the same step that makes the directory appear: the directory is moved
        # into place inside the transaction that writes the event, and taken away again if
        # that transaction does not commit
        moved = False
        try:
            with rt.db.transaction() as s:
                append_audit_event(
                    s, at=now, actor=op.credential, event="dataset.exported",
                    subject_type="dataset", subject_id=manifest_sha,
                    data={"rows": result.rows, "splits": result.splits,
                          "labels": result.labels, "since": info["since"],
                          "directory": str(out_dir.resolve()),
                          "operator": op.principal().label},
                )
                s.flush()
                _move_into(staging, out_dir)
                moved = True
        except BaseException:
            if moved:
                _empty(out_dir)
            raise
        log.info("dataset exported", extra={"rows": result.rows, "manifest_sha256": manifest_sha})
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, out_dir: Path) -> None:
    """Put the staged files in place: the directory itself when it does not exist yet (one
    rename), else into the existing empty one."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for p in staging.iterdir():
        os.replace(p, out_dir / p.name)


def _empty(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
