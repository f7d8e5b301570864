"""`dataset export` keeps near-duplicates in one split: a photo, its mirror image, its quarter
turn and a smaller recompressed copy, uploaded through the real pipeline (ingest stores each
content's PDQ hash), reviewed, and exported from the real SQLite store and blob store.  The
photos ship with scikit-image; the test makes the copies (tests/photos.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.hashing.pdq import Pdq, hamming
from pipeline.learning.dataset import export_dataset, pdq_near_duplicates
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.scoring import Orchestrator, UploadRequest
from pipeline.settings import Settings
from review import NothingToClaim, reviewed_decisions
from tests.integration.api_conftest_helpers import ROOT, PixelStatsScorer
from tests.photos import half_size, mirror, reshared, skimage_photo, turn_90, unchanged

REVIEWER = "rita"
#: the photo and the copies a person makes of it; every one must land in one cluster
COPIES = {
    "chelsea": unchanged,
    "chelsea mirrored": mirror,
    "chelsea turned 90": turn_90,
}
#: the resized and recompressed copy, which clustered before the dihedral hashes
SMALL = "chelsea half size at quality 30"
#: other photos: each a cluster of its own
OTHERS = ("astronaut", "coffee", "rocket", "camera", "horse")


def flat(level: int) -> bytes:
    """A flat grey image: its PDQ hash is noise, under the quality floor."""
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 80, 3), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def images() -> dict[str, bytes]:
    chelsea = skimage_photo("chelsea")
    out = {name: reshared(chelsea, edit) for name, edit in COPIES.items()}
    out[SMALL] = reshared(chelsea, half_size, quality=30)
    out |= {name: reshared(skimage_photo(name), unchanged) for name in OTHERS}
    out |= {"flat grey": flat(128), "flat darker grey": flat(100)}
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime whose policy sends every allowed upload to QA (people see all of it)."""
    raw = yaml.safe_load((ROOT / "pipeline" / "policies" / "default.yaml").read_text())
    for spec in raw["categories"].values():
        spec["qa_sample_rate"] = 1.0
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    runtime = Runtime(Settings(data_dir=tmp_path / "var", policy_path=policy),
                      scorer=PixelStatsScorer())
    runtime.db.upgrade()
    with runtime.db.transaction() as s:
        runtime.review.add_reviewer(s, reviewer_id=REVIEWER, roles=["medical", "senior"],
                                    queues=["adult", "medical", "qa", "senior", "appeals"])
    try:
        yield runtime
    finally:
        runtime.close()


def upload_and_review(rt: Runtime, named: dict[str, bytes]) -> None:
    requests = [UploadRequest(account_id=f"acct-{i}", external_id=name, context=Context(),
                              data=data, source="test")
                for i, (name, data) in enumerate(named.items())]
    with Orchestrator(rt) as orch:
        scored = orch.score(requests)
    assert all(s.ok for s in scored), [s.as_dict() for s in scored if not s.ok]
    decided = 0
    while True:
        try:
            views = rt.desk.claim_many(reviewer_id=REVIEWER, limit=50)
        except NothingToClaim:
            break
        with rt.db.transaction() as s:
            for v in views:
                rt.review.decide(s, item_id=v.id, reviewer_id=REVIEWER, verdict="benign")
                decided += 1
    assert decided == len(named)


def test_mirrored_and_turned_copies_share_the_original_s_cluster_and_split(
    rt: Runtime, tmp_path: Path,
) -> None:
    named = images()
    upload_and_review(rt, named)
    out = tmp_path / "dataset"
    res = export_dataset(rt, out)
    rows = {r["sha256"]: r for r in map(json.loads,
                                        (out / "manifest.jsonl").read_text().splitlines())}
    assert res.rows == len(rows) == len(named)
    of = {name: rows[sha(data)] for name, data in named.items()}
    family = [*COPIES, SMALL]
    assert {of[n]["cluster"] for n in family} == {min(sha(named[n]) for n in family)}
    assert len({of[n]["split"] for n in family}) == 1
    # every other photo, and each flat image, is a cluster of its own
    alone = [n for n in named if n not in family]
    assert [of[n]["cluster"] for n in alone] == [sha(named[n]) for n in alone]
    assert res.clusters == len(alone) + 1 and res.near_duplicate_clusters == 1
    info = json.loads((out / "dataset.json").read_text())
    assert "dihedral" in info["split_rule"]["cluster"]


def test_the_stored_hash_is_the_recomputed_one_and_a_far_one_is_logged(
    rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    named = images()
    upload_and_review(rt, named)
    with rt.db.transaction() as s:
        stored = {d.content_sha256: Pdq.from_hex(d.content_pdq, d.content_pdq_quality)
                  for d in reviewed_decisions(s)
                  if d.content_pdq is not None and d.content_pdq_quality is not None}
    assert set(stored) == {sha(d) for d in named.values()}  # ingest hashed every one
    files = {}
    for name, data in named.items():
        files[sha(data)] = tmp_path / f"{name}.img"
        files[sha(data)].write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="pipeline.learning.dataset"):
        pairs = pdq_near_duplicates(files, stored)
    assert not caplog.records  # every stored hash agrees with the export's
    chelsea = {sha(named[n]) for n in [*COPIES, SMALL]}
    assert {p for p in pairs if set(p) <= chelsea} and all(set(p) <= chelsea for p in pairs)
    # a stored hash from another picture (as a changed hasher would leave) is reported, and
    # changes nothing: the index holds the recomputed hashes
    a, b = sha(named["astronaut"]), sha(named["coffee"])
    assert hamming(stored[a].hash, stored[b].hash) > 31
    with caplog.at_level(logging.WARNING, logger="pipeline.learning.dataset"):
        again = pdq_near_duplicates(files, {**stored, a: stored[b]})
    assert again == pairs
    assert [getattr(r, "sha256", None) for r in caplog.records] == [a, None]  # and the count
