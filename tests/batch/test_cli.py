"""`lookfirst batch` end to end, as a user runs it: a few hundred test-made images plus bad
files through the real CLI in subprocesses (real model, real SQLite, real worker processes),
its exit codes, Ctrl-C, and its rows against `lookfirst score` one image at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.settings import DEMO_POLICY
from tests.batch.conftest import ROOT, ImageSet, make_image_set
from tests.batch.test_engine import comparable, read_rows

pytestmark = pytest.mark.model

LOOKFIRST = Path(sys.executable).parent / "lookfirst"


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
    env.update(PYTHONPATH=str(ROOT), ORT_DISABLE_TELEMETRY="1",
               LOOKFIRST_DATA_DIR=str(data_dir), LOOKFIRST_POLICY_PATH=str(DEMO_POLICY))
    return env


def lookfirst(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(LOOKFIRST), *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, check=False)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout[-2000:],
                                       proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_batch_cli_rows_equal_scoring_one_by_one(image_set: ImageSet, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "batch")
    out = tmp_path / "results.parquet"
    done = lookfirst(env, "batch", str(image_set.manifest), "--out", str(out), "--model",
                     "fp32", "--workers", "2", "--json")
    summary = json.loads(done.stdout)
    rows = read_rows(out)
    manifest = image_set.rows()
    assert sorted(rows) == list(range(len(manifest)))
    assert summary["rows"] == len(manifest) and summary["decided"] == image_set.n_images
    # every bad row carries its code, and the job went on past it
    for ordinal, code in image_set.expected_errors.items():
        assert rows[ordinal]["error_code"] == code, (ordinal, rows[ordinal])
    assert sum(summary["errors"].values()) == len(image_set.expected_errors)
    assert {r["outcome"] for r in rows.values() if r["error_code"] is None} >= {"allow", "review"}

    # the same images through `lookfirst score`, one command per context, in another store
    by_context: dict[str, list[int]] = defaultdict(list)
    for ordinal in range(image_set.n_images):
        context = manifest[ordinal]["context"]
        assert isinstance(context, dict)
        key = ",".join(f"{k}={str(v).lower()}" for k, v in sorted(context.items()))
        if len(by_context[key]) < 6:
            by_context[key].append(ordinal)
    single_env = cli_env(tmp_path / "single")
    compared = 0
    for key, ordinals in by_context.items():
        args = ["score", *(str(image_set.manifest.parent / str(manifest[o]["path"]))
                           for o in ordinals), "--account", "acct-one-by-one", "--json"]
        for pair in key.split(","):
            args += ["--context", pair]
        scored = [json.loads(line) for line in lookfirst(single_env, *args).stdout.splitlines()]
        for ordinal, one in zip(ordinals, scored, strict=True):
            assert comparable(rows[ordinal]) == comparable(one), ordinal
            compared += 1
    assert compared >= 12 and len(by_context) >= 4

    # the same command again is refused (exit 2); with --resume there is nothing left to do
    again = lookfirst(env, "batch", str(image_set.manifest), "--out", str(out), "--json",
                      expect=2)
    assert json.loads(again.stdout)["error"]["code"] == "batch.output_exists"
    resumed = json.loads(lookfirst(env, "batch", str(image_set.manifest), "--out", str(out),
                                   "--resume", "--model", "fp32", "--json").stdout)
    assert resumed["last_run"]["to_model"] == 0 and resumed["rows"] == len(manifest)


def test_batch_cli_refusals_exit_2(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "d")
    missing = lookfirst(env, "batch", str(tmp_path / "nowhere"), "--json", expect=2)
    assert json.loads(missing.stdout)["error"]["code"] == "batch.source_not_found"
    odd = tmp_path / "list.txt"
    odd.write_text("a.jpg\n")
    refused = lookfirst(env, "batch", str(odd), "--json", expect=2)
    assert json.loads(refused.stdout)["error"]["code"] == "batch.source_unsupported"
    bad = lookfirst(env, "batch", str(tmp_path), "--engine", "spark", "--json", expect=2)
    assert json.loads(bad.stdout)["error"]["code"] == "batch.unknown_engine"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_leaves_a_resumable_job(tmp_path: Path) -> None:
    images = make_image_set(tmp_path / "set", 60, seed=31, width=480, height=360)
    env = cli_env(tmp_path / "d")
    out = tmp_path / "results.parquet"
    trace = tmp_path / "trace.txt"
    cmd = [str(LOOKFIRST), "batch", str(images.manifest), "--out", str(out), "--model", "fp32",
           "--workers", "2", "--batch-size", "4", "--part-rows", "8", "--trace", str(trace)]
    # a terminal's job has Ctrl-C's default action; pytest itself may run with SIGINT
    # ignored (started in the background by a non-interactive shell), which a child inherits
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)
    while proc.poll() is None and not (trace.exists() and len(trace.read_text().split()) > 8):
        time.sleep(0.05)
    # what a terminal's Ctrl-C does: SIGINT to the whole foreground group, workers included
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 130, (proc.returncode, stdout, stderr[-3000:])
    assert "Traceback" not in stderr and "--resume" in stderr, stderr[-3000:]
    kept = len(pq.read_table(out).to_pylist()) if any(out.glob("part-*.parquet")) else 0
    assert kept < len(images.rows()), "the job finished before Ctrl-C: nothing was tested"

    resumed = json.loads(lookfirst(env, "batch", str(images.manifest), "--out", str(out),
                                   "--resume", "--model", "fp32", "--json").stdout)
    rows: list[dict[str, Any]] = pq.read_table(out).to_pylist()
    assert sorted(r["ordinal"] for r in rows) == list(range(len(images.rows())))
    assert resumed["last_run"]["skipped"] == kept
    assert resumed["decided"] == images.n_images
