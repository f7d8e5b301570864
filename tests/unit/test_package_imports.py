"""The packages' arrows point one way (pipeline -> models, pipeline -> review), and pipeline
reaches review only through its public interface, `review/__init__.py`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import review

ROOT = Path(__file__).resolve().parents[2]
REVIEW_SUBMODULES = {p.stem for p in (ROOT / "review").glob("*.py")} | {
    p.name for p in (ROOT / "review").iterdir() if (p / "__init__.py").exists()
}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module `path` imports (for `from review import x`, the
    name is review.x: x may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("review", "pipeline", "models"):
                for alias in node.names:
                    yield node.lineno, f"{node.module}.{alias.name}"
            else:
                yield node.lineno, node.module


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_pipeline_imports_review_only_through_its_public_interface() -> None:
    bad = []
    for path in sources("pipeline"):
        rel = path.relative_to(ROOT).as_posix()
        for line, name in imports(path):
            parts = name.split(".")
            if parts[0] == "review" and len(parts) > 1 and parts[1] in REVIEW_SUBMODULES:
                bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "import these from `review` (add them to review/__init__.py):\n" + "\n".join(
        bad)


def test_every_public_name_of_review_is_there() -> None:
    missing = [n for n in review.__all__ if not hasattr(review, n)]
    assert not missing and len(set(review.__all__)) == len(review.__all__)
    # a public name must not hide a submodule of the same name
    assert not set(review.__all__) & REVIEW_SUBMODULES


def test_models_and_review_never_import_pipeline() -> None:
    banned_for = {"models": ("pipeline", "review"), "review": ("pipeline", "models")}
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}"
           for package, banned in banned_for.items()
           for p in sources(package)
           for line, name in imports(p)
           if name.split(".")[0] in banned]
    assert not bad, "\n".join(bad)
