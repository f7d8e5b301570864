"""The packages' arrows point one way (pipeline -> models, pipeline -> review), and pipeline
reaches review only through its public interface, `review/__init__.py`.

The arrows themselves are import-linter contracts in pyproject.toml, which `make lint` checks;
this module runs the same contracts under `make test` (what CI runs), and checks the public
interface itself, which no import contract can."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import review

ROOT = Path(__file__).resolve().parents[2]
REVIEW_SUBMODULES = {p.stem for p in (ROOT / "review").glob("*.py")} | {
    p.name for p in (ROOT / "review").iterdir() if (p / "__init__.py").exists()
}


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", run.stdout)
    assert kept and int(kept.group(1)) >= 2, run.stdout  # the arrows and review's interface


def test_every_public_name_of_review_is_there() -> None:
    missing = [n for n in review.__all__ if not hasattr(review, n)]
    assert not missing and len(set(review.__all__)) == len(review.__all__)
    # a public name must not hide a submodule of the same name
    assert not set(review.__all__) & REVIEW_SUBMODULES
