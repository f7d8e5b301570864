"""bench/gpu_check.py starts, and on a machine without a usable GPU says so and exits 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.gpu_check import NO_GPU, probe
from tests.batch.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORT_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_gpu_check_parses_its_arguments() -> None:
    done = run("--help")
    assert done.returncode == 0 and "--parity" in done.stdout


def test_gpu_check_says_clearly_when_there_is_no_gpu() -> None:
    found = probe()
    done = run("--n", "64", "--parity", "32", "--batch", "16")
    if found["cuda"] and found["cuda_ep"]:  # a GPU machine: the check runs to its verdict
        assert done.returncode in (0, 1), done.stderr[-2000:]
        assert "decode_ceiling" in done.stdout.splitlines()[-1]
        return
    assert done.returncode == NO_GPU
    assert done.stderr.startswith("gpu_check: no usable GPU")
    assert json.loads(done.stdout)["error"]["code"] == "gpu.unavailable"
