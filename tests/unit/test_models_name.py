"""`models` is a common package name: onnxruntime's transformers folder has a `models`
directory, and importing onnxruntime.quantization puts that folder on sys.path.  A process
spawned after an int8 build (a batch job's workers get their parent's sys.path) then resolved
`models` to it as a namespace package under an editable install, and the model card went
missing in every worker.  Run in fresh interpreters outside the checkout, as `lookfirst` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime

TRANSFORMERS = Path(onnxruntime.__file__).parent / "transformers"


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})


def test_importing_the_quantiser_leaves_sys_path_alone(tmp_path: Path) -> None:
    probe = _run(
        "import sys\n"
        "before = list(sys.path)\n"
        "import onnxruntime.quantization\n"
        "print(sorted(set(sys.path) - set(before)))\n", tmp_path)
    assert probe.returncode == 0, probe.stderr
    # what onnxruntime does on its own (if a release stops doing it, this test says so)
    assert str(TRANSFORMERS) in probe.stdout
    kept = _run(
        "import sys\n"
        "from models.classifier.quantize import _sys_path_kept\n"
        "before = list(sys.path)\n"
        "with _sys_path_kept():\n"
        "    import onnxruntime.quantization\n"
        "assert sys.path == before, sorted(set(sys.path) - set(before))\n", tmp_path)
    assert kept.returncode == 0, kept.stderr


def test_the_card_is_found_whatever_models_resolves_to(tmp_path: Path) -> None:
    got = _run(
        "import sys\n"
        f"sys.path.insert(0, {str(TRANSFORMERS)!r})\n"
        "from models.nudenet import NudeNetCard, default_card_path\n"
        "print(NudeNetCard.load(default_card_path()).name)\n", tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().startswith("nudenet")
