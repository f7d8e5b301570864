"""The README's state diagram is generated from the transition table and must not drift."""

from __future__ import annotations

from pathlib import Path

from review.states import mermaid_diagram

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_diagram_matches_transition_table() -> None:
    text = README.read_text()
    start, end = "<!-- diagram:start -->\n", "<!-- diagram:end -->"
    shown = text[text.index(start) + len(start) : text.index(end)].strip()
    assert shown == mermaid_diagram().strip(), "run: lookfirst review diagram, paste into README"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
