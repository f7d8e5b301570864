"""The CLI package's shape (no import circle, small modules, every command guarded) and its one
error-to-exit-code decorator, run through typer as `lookfirst` runs it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli._common import Exit, JsonOpt, guarded
from pipeline.errors import ConfigurationError
from review.errors import AuditChainBroken, NotClaimant

CLI = Path(__file__).resolve().parents[2] / "pipeline" / "cli"
GROUPS = ["review", "actions", "audit", "policy", "db", "reviewers", "decisions", "outbox",
          "banks", "keys", "labelstudio", "models"]


def _cli_imports(path: Path) -> set[str]:
    """What a module imports from pipeline.cli: "pipeline.cli._common", "pipeline.cli:main"."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline.cli":
            found |= {f"pipeline.cli:{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline.cli."):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline.cli")}
    return found


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_no_import_circle_and_no_module_over_400_lines(path: Path) -> None:
    imports = _cli_imports(path)
    helpers = {f"pipeline.cli.{p.stem}" for p in CLI.glob("_*.py") if p.stem != "__init__"}
    if path.name == "_render.py":
        assert imports == set()
    elif path.name == "_common.py":  # the helpers: each other at most, never a group
        assert imports <= helpers - {"pipeline.cli._common"}
    elif path.name == "__main__.py":
        assert imports == {"pipeline.cli:main"}
    elif path.name != "__init__.py":  # a group: the helpers only, never __init__ or a sibling
        assert "pipeline.cli._common" in imports and imports <= helpers
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400


def _is_guarded(fn: Any) -> bool:
    wrapper = guarded(lambda: None).__code__  # every command guarded() makes runs this code
    while fn is not None:
        if getattr(fn, "__code__", None) is wrapper:
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def test_every_command_runs_through_guarded() -> None:
    todo, seen = [typer.main.get_command(app)], []
    while todo:
        cmd = todo.pop()
        sub = getattr(cmd, "commands", None)
        if sub is not None:
            todo.extend(sub.values())
            continue
        seen.append(cmd.name)
        assert _is_guarded(cmd.callback), cmd.name
    assert len(seen) > 40 and not _is_guarded(test_every_command_runs_through_guarded)


@pytest.mark.parametrize("args", [[], *([g] for g in GROUPS)], ids=lambda a: " ".join(a) or "-")
def test_help_of_the_app_and_of_each_group(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _commands() -> list[list[str]]:
    found: list[list[str]] = []
    todo: list[tuple[list[str], Any]] = [([], typer.main.get_command(app))]
    while todo:
        path, cmd = todo.pop()
        sub = getattr(cmd, "commands", None)
        if sub is None:
            found.append(path)
        else:
            todo.extend(([*path, name], c) for name, c in sub.items())
    return sorted(found)


@pytest.mark.parametrize("args", _commands(), ids=lambda a: " ".join(a))
def test_every_commands_help_reads_cleanly(args: list[str]) -> None:
    """No `<bool>` tag on a flag; the summary a group lists is never broken mid-sentence."""
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    cmd: Any = typer.main.get_command(app)
    for name in args:
        cmd = cmd.commands[name]
    summary = (cmd.help or "").split("\n\n")[0]
    assert summary and "\n" not in summary, (args, summary)


# ---- the decorator ------------------------------------------------------------------------------
demo = typer.Typer()


@demo.command()
@guarded
def refuse(what: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> int:
    """Raise what the argument names (a stand-in for a command body)."""
    if what == "review":
        raise NotClaimant()
    if what == "config":
        raise ConfigurationError("set LOOKFIRST_WEBHOOK_URL")
    if what == "audit":
        raise AuditChainBroken()
    if what == "bug":
        raise RuntimeError("a bug")
    return Exit.CHECK_FAILED if what == "check" else Exit.OK


@demo.command()
@guarded
def plain() -> None:
    """A body with no --json and no return value."""


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(demo, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_guarded_maps_errors_to_their_exit_codes_as_json_or_a_red_line() -> None:
    code, stdout, _ = _run("refuse", "review", "--json")
    assert code == 2
    assert json.loads(stdout) == {"error": {"code": "review.not_claimant",
                                            "detail": NotClaimant.__doc__}}
    code, stdout, stderr = _run("refuse", "config")
    assert code == 2 and stdout == ""
    assert "config.invalid" in stderr and "LOOKFIRST_WEBHOOK_URL" in stderr
    assert _run("refuse", "audit")[0] == Exit.CHECK_FAILED
    assert _run("refuse", "check")[0] == Exit.CHECK_FAILED  # the body's own exit code
    assert _run("refuse", "fine")[0] == Exit.OK
    assert _run("plain")[0] == Exit.OK


def test_guarded_does_not_swallow_a_bug() -> None:
    r = CliRunner().invoke(demo, ["refuse", "bug", "--json"])
    assert isinstance(r.exception, RuntimeError) and r.exit_code == 1
