"""No module of pipeline/, models/ or review/ (migrations aside) grows past 600 lines: a module
that long holds more than one thing, and the next change belongs in a module of its own."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 600


def modules() -> list[Path]:
    return sorted(p for package in ("pipeline", "models", "review")
                  for p in (ROOT / package).rglob("*.py")
                  if "migrations" not in p.relative_to(ROOT).parts)


def test_every_module_is_at_most_600_lines() -> None:
    assert len(modules()) > 50  # the walk found the packages
    long = {p.relative_to(ROOT).as_posix(): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"
