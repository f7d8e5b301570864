"""The batch engine and the API's path agree on hash-bank matches: the engine's workers hash
the images they decode (PDQ, eight dihedral hashes), the recorder matches them through the
same bank matcher, and every row's decision and reasons equal scoring the same upload one by
one through the Orchestrator (what `lookfirst score` and the API run).  Real NudeNet, real
worker processes, SQLite; sample photos edited by the test."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.batch import JobOptions, run_job
from pipeline.hashing.pdq import pdq_hash
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.scoring import Orchestrator, UploadRequest
from review import add_to_bank
from tests.batch.test_engine import comparable, read_rows
from tests.photos import half_size, jpeg, mirror, reshared, sample, turn_90

pytestmark = pytest.mark.model
AT = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def _bank(rt: Runtime) -> None:
    with rt.db.transaction() as s:
        add_to_bank(s, bank="violating", kind="pdq", value=pdq_hash(sample("coffee")).hex,
                    quality=100, source="test list", actor="op:test", at=AT)
        add_to_bank(s, bank="cleared_benign", kind="pdq",
                    value=pdq_hash(sample("astronaut")).hex, quality=100, source="verdict:1",
                    actor="dana", at=AT, scope_account="acct-a", origin_item_id=7)


def test_engine_and_orchestrator_agree_on_bank_matches(tmp_path: Path,
                                                       make_runtime: Any) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    files = {
        "coffee-small.jpg": (reshared(sample("coffee"), half_size, quality=30), "acct-a"),
        "coffee-mirror.jpg": (reshared(sample("coffee"), mirror), "acct-b"),
        "astronaut-small.jpg": (reshared(sample("astronaut"), half_size, quality=30), "acct-a"),
        "astronaut-turned.jpg": (reshared(sample("astronaut"), turn_90), "acct-b"),
        "chelsea.jpg": (reshared(sample("chelsea"), lambda im: im), "acct-a"),
        "flat.jpg": (jpeg(Image.fromarray(np.full((300, 400, 3), 128, np.uint8))), "acct-a"),
    }
    lines = []
    for i, (name, (data, account)) in enumerate(files.items()):
        (folder / name).write_bytes(data)
        lines.append(json.dumps({"path": f"images/{name}", "upload_id": f"u{i}",
                                 "account_id": account, "context": {}}))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    rt = make_runtime(tmp_path / "engine", f"sqlite:///{tmp_path / 'engine.db'}")
    _bank(rt)
    out = tmp_path / "out.parquet"
    run_job(rt, str(manifest), out, JobOptions(model="fp32", workers=1, batch_size=4,
                                               progress=False))
    rows = read_rows(out)

    ref = make_runtime(tmp_path / "single", f"sqlite:///{tmp_path / 'single.db'}")
    _bank(ref)
    banks: dict[str, Any] = {}
    with Orchestrator(ref, decode_workers=1) as orch:
        for i, (name, (_, account)) in enumerate(files.items()):
            req = UploadRequest(account_id=account, external_id=f"u{i}", context=Context(),
                                source="batch", path=folder / name)
            (single,) = orch.score([req])
            assert single.ok
            assert comparable(rows[i]) == comparable(single.as_dict()), name
            banks[name] = single.reasons.get("bank")

    def which(name: str) -> tuple[str, str] | None:
        b = banks[name]
        return None if b is None else (b["bank"], b["kind"])

    assert which("coffee-small.jpg") == which("coffee-mirror.jpg") == ("violating", "pdq")
    assert which("astronaut-small.jpg") == ("cleared_benign", "pdq")  # its account's clearance
    assert which("astronaut-turned.jpg") is None  # another account's
    assert which("chelsea.jpg") is None and which("flat.jpg") is None
    assert rows[0]["queue"] == "severe"
