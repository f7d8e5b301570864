"""Kill -9 at random moments, then the same command with --resume: exactly once, everywhere.

`lookfirst batch` runs as a whole process group (main process and its workers) and is killed
with SIGKILL after a random delay, 5 times (20 in `make test-slow`); then it runs to the end.
After every run: no upload decided before that run was sent to the model in it.  At the end:
each upload has exactly one decision, each flagged upload exactly one review item, the audit
chain verifies, and the Parquet output holds every row exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from pipeline.settings import DEMO_POLICY
from review import audit
from review.db import Database
from review.schema import Decision, ReviewItem, Upload
from review.states import ItemKind
from tests.batch.conftest import ROOT, ImageSet, make_image_set

pytestmark = [pytest.mark.model, pytest.mark.slow]

LOOKFIRST = Path(sys.executable).parent / "lookfirst"
KILLS = 20 if os.environ.get("LOOKFIRST_HYPOTHESIS_PROFILE") == "slow" else 5


def decided(db: Database) -> set[str]:
    with db.transaction() as s:
        return set(s.scalars(
            select(Upload.external_id).join(Decision, Decision.upload_id == Upload.id)
        ))


def run_job(images: ImageSet, out: Path, env: dict[str, str], trace: Path,
            log: Path, kill_after: float | None, *, db: Database,
            kill_at_decisions: int | None = None,
            from_first_batch: bool = False) -> bool:
    """Run the job and SIGKILL its process group: `kill_after` s after its start (or after it
    sent its first batch to the model), or once `kill_at_decisions` decisions are committed
    in all (a point in the work, whatever the machine's load).  True if it was killed."""
    cmd = [str(LOOKFIRST), "batch", str(images.manifest), "--out", str(out),
           "--model", "fp32", "--workers", "2", "--batch-size", "4", "--part-rows", "12",
           "--resume", "--trace", str(trace)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            if kill_at_decisions is not None:
                deadline = time.monotonic() + 600
                while proc.poll() is None and time.monotonic() < deadline:
                    if len(decided(db)) >= kill_at_decisions:
                        raise subprocess.TimeoutExpired(cmd, 0)
                    time.sleep(0.02)
            if kill_after is not None and from_first_batch:
                # past start-up (imports, worker processes): the kill lands among batches
                while proc.poll() is None and not (trace.exists() and trace.stat().st_size):
                    time.sleep(0.05)
            proc.wait(timeout=kill_after if kill_after is not None else 600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers
            proc.wait()
            return True
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    return False


def test_kill_minus_nine_then_resume(tmp_path: Path) -> None:
    images = make_image_set(tmp_path / "set", 90, seed=21, width=480, height=360)
    manifest = images.rows()
    upload_of = {i: str(m.get("upload_id")) for i, m in enumerate(manifest)}
    db_url = f"sqlite:///{tmp_path / 'job.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORT_DISABLE_TELEMETRY": "1",
           "LOOKFIRST_DATA_DIR": str(tmp_path / "var"), "LOOKFIRST_DATABASE_URL": db_url,
           "LOOKFIRST_POLICY_PATH": str(DEMO_POLICY)}
    db = Database(db_url)
    db.upgrade()
    out = tmp_path / "results.parquet"
    seed = int(os.environ.get("LOOKFIRST_KILL_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    print(f"kill seed {seed}")
    killed_mid_run = 0
    try:
        for run in range(KILLS + 1):
            before = decided(db)
            trace = tmp_path / f"trace-{run}.txt"
            # every other kill, the first included, at a point in the work (some decisions
            # further on), so kills land mid-recording however fast or slow the machine (on an
            # idle one the whole job takes ~2 s: a first kill at a random moment of up to 6 s
            # found it finished, and no later kill had work left); the others at random moments
            at_work = run % 2 == 0 and run < KILLS
            delay = None if at_work or run == KILLS else rng.uniform(0.05, 1.5)
            target = len(before) + rng.randint(1, 12) if at_work else None
            killed = run_job(images, out, env, trace, tmp_path / f"run-{run}.log", delay, db=db,
                             kill_at_decisions=target, from_first_batch=run % 3 != 0)
            # killed after this run had recorded something: the kill landed mid-work
            killed_mid_run += killed and len(decided(db)) > len(before)
            sent = {upload_of[int(x)] for x in trace.read_text().split()} if trace.exists() \
                else set()
            # the resume never re-runs the model on a row whose decision was committed
            assert not (sent & before), f"run {run} rescored {sorted(sent & before)[:5]}"
    finally:
        db.dispose()
    print(f"{killed_mid_run} of {KILLS} kills landed while decisions were being recorded")
    assert killed_mid_run >= 1, "no kill landed mid-work: nothing was tested"

    rows = pq.read_table(out).to_pylist()
    ordinals = [r["ordinal"] for r in rows]
    assert sorted(ordinals) == list(range(len(manifest))), "each row exactly once in the output"
    for ordinal, code in images.expected_errors.items():
        assert rows[ordinals.index(ordinal)]["error_code"] == code

    db = Database(db_url)
    try:
        with db.transaction() as s:
            per_upload = dict(s.execute(
                select(Upload.external_id, func.count(Decision.id))
                .join(Decision, Decision.upload_id == Upload.id).group_by(Upload.external_id)
            ).all())
            assert set(per_upload) == {upload_of[i] for i in range(images.n_images)}
            assert set(per_upload.values()) == {1}
            flagged = s.scalars(select(Decision.id).where(Decision.outcome != "allow")).all()
            assert flagged, "the demo policy flags faces: the test needs flagged uploads"
            items = dict(s.execute(
                select(ReviewItem.decision_id, func.count(ReviewItem.id))
                .where(ReviewItem.kind == ItemKind.INITIAL).group_by(ReviewItem.decision_id)
            ).all())
            assert {d: items.get(d, 0) for d in flagged} == dict.fromkeys(flagged, 1)
            by_decision = {r["decision_id"]: r for r in rows if r["decision_id"]}
            assert len(by_decision) == images.n_images
            stored = dict(s.execute(select(Decision.id, Decision.outcome)).all())
            assert {d: r["outcome"] for d, r in by_decision.items()} == stored
            assert audit.verify(s).ok
    finally:
        db.dispose()
