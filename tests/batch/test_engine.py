"""The local engine against scoring one by one: same rows, same outcomes, bad files coded.

Real parts: the real NudeNet model, real SQLite and PostgreSQL, real worker processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from pipeline.batch import JobOptions, run_job
from pipeline.batch.errors import OutputExists
from pipeline.policy import Context
from pipeline.scoring import Orchestrator, UploadRequest
from review import audit
from review.schema import Decision, Outbox, ReviewItem, Upload
from tests.batch.conftest import ImageSet

pytestmark = pytest.mark.model

FP32 = JobOptions(model="fp32", workers=2, batch_size=8, part_rows=64, progress=False)


def read_rows(out: Path) -> dict[int, dict[str, Any]]:
    rows = pq.read_table(out).to_pylist()
    ordinals = [r["ordinal"] for r in rows]
    assert len(ordinals) == len(set(ordinals)), "a row appears twice in the output"
    return {r["ordinal"]: r for r in rows}


def comparable(d: dict[str, Any]) -> dict[str, Any]:
    """What must agree between two paths (ids differ by construction)."""
    reasons = d["reasons"]
    if isinstance(reasons, str):
        reasons = json.loads(reasons)
    return {
        "sha256": d["sha256"], "outcome": d["outcome"], "queue": d["queue"],
        "scores": dict(d["scores"]), "model_version": d["model_version"],
        "policy_version": d["policy_version"],
        "reasons": json.loads(json.dumps(reasons, sort_keys=True, default=str)),
        "flagged": d["review_item_id"] is not None,
    }


def test_rows_equal_scoring_one_by_one(image_set: ImageSet, tmp_path: Path,
                                       make_runtime: Any) -> None:
    rt = make_runtime(tmp_path / "engine", f"sqlite:///{tmp_path / 'engine.db'}")
    out = tmp_path / "results.parquet"
    result = run_job(rt, str(image_set.manifest), out, FP32)
    rows = read_rows(out)
    manifest = image_set.rows()
    assert sorted(rows) == list(range(len(manifest)))

    # every bad row carries its code, and the job went on past it
    for ordinal, code in image_set.expected_errors.items():
        assert rows[ordinal]["error_code"] == code, (ordinal, rows[ordinal])
        assert rows[ordinal]["decision_id"] is None
    assert result.summary["errors"] == {
        code: list(image_set.expected_errors.values()).count(code)
        for code in set(image_set.expected_errors.values())
    }
    assert result.summary["decided"] == image_set.n_images

    # the same uploads scored one at a time through the Orchestrator, in another database
    ref = make_runtime(tmp_path / "single", f"sqlite:///{tmp_path / 'single.db'}")
    with Orchestrator(ref, decode_workers=1) as orch:
        for ordinal in range(image_set.n_images):
            m = manifest[ordinal]
            req = UploadRequest(account_id=str(m["account_id"]), external_id=str(m["upload_id"]),
                                context=Context.parse(m["context"]),  # type: ignore[arg-type]
                                source="batch", path=image_set.manifest.parent / str(m["path"]))
            (single,) = orch.score([req])
            assert single.ok
            assert comparable(rows[ordinal]) == comparable(single.as_dict()), ordinal
    flagged = [r for r in rows.values() if r["review_item_id"] is not None]
    assert flagged, "the demo policy flags faces: some rows must reach a queue"
    assert {r["outcome"] for r in rows.values() if r["error_code"] is None} >= {"allow", "review"}

    with rt.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == image_set.n_images
        assert s.scalar(select(func.count()).select_from(Outbox)) == image_set.n_images
        assert audit.verify(s).ok


def test_second_run_needs_resume(small_set: ImageSet, tmp_path: Path,
                                 make_runtime: Any) -> None:
    rt = make_runtime(tmp_path / "d", f"sqlite:///{tmp_path / 'db.sqlite'}")
    out = tmp_path / "out"
    first = run_job(rt, str(small_set.manifest), out, FP32)
    with pytest.raises(OutputExists):
        run_job(rt, str(small_set.manifest), out, FP32)
    again = run_job(rt, str(small_set.manifest), out,
                    JobOptions(**{**FP32.__dict__, "resume": True}))
    # nothing left to do: no row scored or recorded again, the output unchanged
    assert again.counters["to_model"] == 0 and again.counters["recorded"] == 0
    assert again.counters["skipped"] == first.summary["rows"]
    assert read_rows(out).keys() == set(range(first.summary["rows"]))


def test_decided_uploads_never_reach_the_model(small_set: ImageSet, tmp_path: Path,
                                               make_runtime: Any) -> None:
    """A new job over uploads another job already decided answers from the store."""
    rt = make_runtime(tmp_path / "d", f"sqlite:///{tmp_path / 'db.sqlite'}")
    run_job(rt, str(small_set.manifest), tmp_path / "one", FP32)
    trace = tmp_path / "trace.txt"
    second = run_job(rt, str(small_set.manifest), tmp_path / "two",
                     JobOptions(**{**FP32.__dict__, "trace": trace}))
    rows = read_rows(tmp_path / "two")
    sent = {int(x) for x in trace.read_text().split()}
    decided = {o for o, r in rows.items() if r["decision_id"] is not None}
    assert decided and not (sent & decided)
    assert all(rows[o]["already_scored"] for o in decided)
    assert second.counters["from_store"] == len(decided)


@pytest.mark.postgres
def test_batches_on_postgres(small_set: ImageSet, tmp_path: Path, pg_url: str,
                             make_runtime: Any) -> None:
    rt = make_runtime(tmp_path / "d", pg_url)
    result = run_job(rt, str(small_set.manifest), tmp_path / "out", FP32)
    rows = read_rows(tmp_path / "out")
    with rt.db.transaction() as s:
        per_upload = s.execute(
            select(Upload.external_id, func.count(Decision.id))
            .join(Decision, Decision.upload_id == Upload.id).group_by(Upload.external_id)
        ).all()
        assert len(per_upload) == small_set.n_images
        assert all(n == 1 for _, n in per_upload)
        items = s.scalar(select(func.count()).select_from(ReviewItem))
        assert items == sum(1 for r in rows.values() if r["review_item_id"] is not None)
        assert audit.verify(s).ok
    assert result.summary["decided"] == small_set.n_images


def test_another_context_is_that_rows_error_and_the_job_goes_on(
        small_set: ImageSet, tmp_path: Path, make_runtime: Any) -> None:
    """An upload is decided once, with the context it was first scored with (as the API and
    `lookfirst score` refuse): a later row naming the same upload with another context gets
    `upload.context_conflict`, in a later job and within one batch, and the rest is scored."""
    rt = make_runtime(tmp_path / "d", f"sqlite:///{tmp_path / 'db.sqlite'}")
    images = sorted(small_set.folder.glob("img*.jpg"))[:3]

    def manifest(name: str, rows: list[tuple[Path, str, dict[str, Any]]]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"path": str(p), "upload_id": u, "account_id": "a",
                                            "context": c}) + "\n" for p, u, c in rows))
        return path

    first = manifest("one.jsonl", [(images[0], "u0", {}), (images[1], "u1", {})])
    run_job(rt, str(first), tmp_path / "one", FP32)
    second = manifest("two.jsonl", [
        (images[0], "u0", {"medical_sharing": True}),  # decided before, without it
        (images[1], "u1", {}),                         # the same again: answered from the store
        (images[2], "u2", {}),                         # new
        (images[2], "u2", {"audience": "public"}),     # the same batch names u2 twice
    ])
    result = run_job(rt, str(second), tmp_path / "two", FP32)
    rows = read_rows(tmp_path / "two")
    assert rows[0]["error_code"] == "upload.context_conflict"
    assert "medical_sharing=true" in rows[0]["error_detail"]
    assert rows[1]["error_code"] is None and rows[1]["already_scored"]
    assert rows[2]["error_code"] is None and rows[2]["decision_id"]
    assert rows[3]["error_code"] == "upload.context_conflict"
    assert result.summary["errors"] == {"upload.context_conflict": 2}
    with rt.db.transaction() as s:
        contexts = dict(s.execute(select(Upload.external_id, Upload.context)).all())
    assert set(contexts) == {"u0", "u1", "u2"}
    assert not contexts["u0"].get("medical_sharing") and contexts["u2"]["audience"] == "private"
