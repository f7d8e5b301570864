"""The README's one table of error codes ("Error codes") lists every code the source defines,
and nothing else: an error class's `code = "..."`, and the few codes written out where a
response or a CLI failure is made by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.api.errors import HTTP_STATUS
from pipeline.cli._common import EXIT_CODES
from pipeline.errors import ErrorKind

ROOT = Path(__file__).resolve().parents[2]
CODE = r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*"
#: where a code is written out by hand: a JSON body, error_response(...), a failure tuple
LITERAL = re.compile(
    rf'"code": "({CODE})"'
    rf'|error_response\(\s*[^,()]+(?:\([^()]*\))?,\s*"({CODE})"'
    rf'|return \(\s*"({CODE})",')


def _sources() -> list[Path]:
    return sorted(p for package in ("pipeline", "models", "review")
                  for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def class_codes() -> dict[str, str]:
    """code -> where: every `code = "..."` in a class body."""
    found: dict[str, str] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            for stmt in node.body:
                target: ast.expr
                value: ast.expr | None
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                    target, value = stmt.targets[0], stmt.value
                elif isinstance(stmt, ast.AnnAssign):  # code: ClassVar[str] = "..."
                    target, value = stmt.target, stmt.value
                else:
                    continue
                if (isinstance(target, ast.Name) and target.id == "code"
                        and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    found.setdefault(value.value, f"{path.relative_to(ROOT)}:{node.name}")
    return found


def literal_codes() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in _sources():
        for m in LITERAL.finditer(path.read_text(encoding="utf-8")):
            code = next(g for g in m.groups() if g)
            found.setdefault(code, str(path.relative_to(ROOT)))
    # the API's codes for the framework's own HTTP errors
    from pipeline.api.errors import _HTTP_CODES

    for code in _HTTP_CODES.values():
        found.setdefault(code, "pipeline/api/errors.py:_HTTP_CODES")
    return found


def readme_codes() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Error codes\n"):]
    section = section[:section.index("\n## ", 1)]
    rows = re.findall(rf"^\| `({CODE})` \| ([^|]+) \| ([^|]+) \|", section, re.MULTILINE)
    assert len(rows) == len({r[0] for r in rows}), "a code is listed twice"
    return {code: (http.strip(), exit_.strip()) for code, http, exit_ in rows}


def test_the_sources_define_codes_this_test_can_see() -> None:
    codes = class_codes()
    assert {"upload.context_conflict", "verdict.unknown", "input.not_found",
            "review.fresh_eyes", "review.not_entitled"} <= set(codes)
    assert {"dependency.database", "internal"} <= set(literal_codes())


def test_the_readme_lists_every_code_and_only_those() -> None:
    defined = {**literal_codes(), **class_codes()}
    listed = readme_codes()
    missing = sorted(set(defined) - set(listed))
    assert not missing, "add to the README's Error codes table: " + ", ".join(
        f"{c} ({defined[c]})" for c in missing)
    gone = sorted(set(listed) - set(defined))
    assert not gone, f"the README's Error codes table lists codes no source defines: {gone}"


@pytest.mark.parametrize("module", ["models.errors", "pipeline.errors", "review.errors",
                                    "pipeline.api.errors"])
def test_the_readme_gives_each_error_class_its_status_and_exit_code(module: str) -> None:
    import importlib

    listed = readme_codes()
    for obj in vars(importlib.import_module(module)).values():
        code, kind = getattr(obj, "code", None), getattr(obj, "kind", None)
        if not isinstance(obj, type) or not isinstance(code, str) or kind is None:
            continue
        if obj.__module__ != module:
            continue
        k = ErrorKind(kind)
        assert listed[code] == (str(HTTP_STATUS[k]), str(int(EXIT_CODES[k]))), code
