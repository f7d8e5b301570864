"""The README's tree of modules ("What each module owns") names every module of pipeline/,
models/ and review/, and nothing that is not there: a newcomer reads the layout from it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^\w+(\.py|/)$")


def readme_tree() -> set[str]:
    """Every path the tree names (folders end with '/'), from its indentation."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("What each module owns:"):]
    block = block[block.index("```\n") + 4: block.index("\n```", block.index("```\n") + 4)]
    named: set[str] = set()
    folders: list[str] = []
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = []
        for token in line.split():
            if not NAME.match(token):
                break
            names.append(token)
        if not names:
            continue  # a description running on
        del folders[depth:]
        for name in names:
            named.add("".join(folders) + name)
        if names[-1].endswith("/"):
            folders.append(names[-1])
    return named


def test_the_readme_tree_names_every_module_and_only_those() -> None:
    named = readme_tree()
    assert {"pipeline/", "models/", "review/"} <= named
    modules = {p.relative_to(ROOT).as_posix()
               for package in ("pipeline", "models", "review")
               for p in (ROOT / package).rglob("*.py")
               if "migrations" not in p.parts and p.name not in ("__init__.py", "__main__.py")}
    missing = sorted(modules - named)
    assert not missing, f"add these to the README's architecture tree: {missing}"
    gone = sorted(n for n in named if not (ROOT / n).exists())
    assert not gone, f"the README's architecture tree names what is not there: {gone}"
