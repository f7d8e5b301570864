"""What every command group shares: the consoles and progress bars, the exit codes and the one
table from an error's kind to its exit code, `JsonOpt`, the settings and runtime, `emit`, and
`guarded`; and what the model commands share (`PolicyOpt`, `RegistryOpt`, `ForceOpt`, the
policy and registry they name, dates on the command line).

Exit codes: 0 ok, 1 a check failed (audit verify), 2 the user's input was refused, 3 an external
dependency (database, model, webhook) is unavailable.  Errors are one JSON object
`{"error": {"code", "detail"}}` with --json, a red line otherwise, never a traceback.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, ParamSpec

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import OperationalError

from models.errors import CodedError, InvalidArgument
from pipeline.errors import ConfigurationError, ErrorKind
from pipeline.settings import Settings
from review import ReviewError

if TYPE_CHECKING:
    import datetime as dt

    from rich.progress import Progress

    from pipeline.policy import Policy
    from pipeline.runtime import Runtime

log = logging.getLogger(__name__)
P = ParamSpec("P")


class Exit(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USER_ERROR = 2
    DEPENDENCY = 3


#: an error's kind -> the exit code: the one place the CLI decides one (the API's statuses are
#: in pipeline.api.errors.HTTP_STATUS)
EXIT_CODES: Final[Mapping[ErrorKind, Exit]] = {
    ErrorKind.INVALID: Exit.USER_ERROR,
    ErrorKind.UNPROCESSABLE: Exit.USER_ERROR,
    ErrorKind.TOO_LARGE: Exit.USER_ERROR,
    ErrorKind.UNSUPPORTED_MEDIA: Exit.USER_ERROR,
    ErrorKind.UNAUTHENTICATED: Exit.USER_ERROR,
    ErrorKind.FORBIDDEN: Exit.USER_ERROR,
    ErrorKind.NOT_FOUND: Exit.USER_ERROR,
    ErrorKind.CONFLICT: Exit.USER_ERROR,
    ErrorKind.LIMITED: Exit.USER_ERROR,
    ErrorKind.UNAVAILABLE: Exit.DEPENDENCY,
    ErrorKind.CHECK_FAILED: Exit.CHECK_FAILED,
}

out = Console()
err = Console(stderr=True)


def _no_type_tag_on_flags() -> None:
    """`--help` shows a value's type (`<str>`) beside each option; a flag takes no value, so
    its `<bool>` tag only confuses (`--json <bool>` reads as if it wanted `--json true`)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_lookfirst", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._lookfirst = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_type_tag_on_flags()

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def group(name: str, help: str) -> typer.Typer:
    """A named command group (`lookfirst NAME ...`); __init__ adds it to the app."""
    return typer.Typer(name=name, no_args_is_help=True, help=help)


def commands() -> typer.Typer:
    """Top-level commands of one module (`lookfirst score`); __init__ merges them into the app."""
    return typer.Typer()


# ---- errors -> exit codes ---------------------------------------------------------------------
def failure(exc: BaseException) -> tuple[str, str, Exit] | None:
    """(code, detail, exit code) for an error we expect, None for anything else (a bug)."""
    if isinstance(exc, CodedError | ReviewError):
        return exc.code, exc.detail, EXIT_CODES[ErrorKind(exc.kind)]
    if isinstance(exc, OperationalError):
        log.debug("database unavailable", exc_info=True)
        return ("dependency.database",
                f"the database is unavailable ({type(exc.orig).__name__})", Exit.DEPENDENCY)
    if isinstance(exc, ValidationError):
        return "config.invalid", str(exc).splitlines()[0], Exit.USER_ERROR
    return None


def fail(code: str, detail: str, exit_code: int, as_json: bool) -> NoReturn:
    if as_json:
        out.print_json(json.dumps({"error": {"code": code, "detail": detail}}))
    else:
        err.print(f"[red]error[/red] [bold]{code}[/bold]: {detail}", highlight=False,
                  soft_wrap=True)
    raise typer.Exit(exit_code)


def guarded(body: Callable[P, int | None]) -> Callable[P, None]:
    """Make a command of `body`: run it, exit with the code it returns (None: 0), and map every
    error we expect to its code and exit code, so that no traceback reaches the user.

    A body with an `as_json` parameter gets its errors as JSON when it is set.
    """

    @functools.wraps(body)
    def command(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            code = body(*args, **kwargs)
        except Exception as exc:
            found = failure(exc)
            if found is None:
                raise
            fail(*found, as_json=bool(kwargs.get("as_json", False)))
        raise typer.Exit(int(code or Exit.OK))

    command.__doc__ = one_line_paragraphs(body.__doc__)
    return command


def one_line_paragraphs(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line: `--help` keeps a docstring's line breaks,
    which would break a command's summary mid-sentence in its group's list."""
    if doc is None:
        return None
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


# ---- settings, runtime, output ----------------------------------------------------------------
def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigurationError(
            f"LOOKFIRST_{str(first['loc'][0]).upper()}: {first['msg']}"
        ) from None


def runtime() -> Runtime:
    from pipeline.runtime import Runtime

    rt = Runtime(settings())
    rt.db.upgrade()  # idempotent: a fresh laptop needs no separate step
    return rt


def emit(obj: Any, as_json: bool, title: str | None = None) -> None:
    """One JSON document on stdout with --json; otherwise the record as a table for people
    (pipeline.cli._render), never a Python repr."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    elif isinstance(obj, str):
        out.print(obj, highlight=False, soft_wrap=True)
    else:
        from pipeline.cli._render import render

        out.print(render(obj, title))


class BarProgress:
    """models.classifier.progress.Progress drawn as rich bars on stderr."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def start(self, key: str, description: str, total: int | None) -> None:
        if key in self.tasks:
            self.bar.reset(self.tasks[key], total=total, description=description, visible=True)
        else:
            self.tasks[key] = self.bar.add_task(description, total=total)

    def advance(self, key: str, steps: int = 1) -> None:
        if key in self.tasks:
            self.bar.advance(self.tasks[key], steps)

    def note(self, message: str) -> None:
        self.bar.console.print(message, highlight=False)


def progress_bar(as_json: bool) -> Progress:
    """Bars with counts and times on stderr; they vanish when stdout carries --json."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=as_json)


# ---- what the model commands share ------------------------------------------------------------
PolicyOpt = Annotated[Path | None, typer.Option(
    "--policy", help="Policy file (default: LOOKFIRST_POLICY_PATH, or bundled).")]
RegistryOpt = Annotated[Path | None, typer.Option(
    "--registry", help="Model registry directory (default: DATA_DIR/models).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Accept a model that failed its training quality gate (recorded).")]


def policy_at(path: Path | None) -> Policy:
    """The policy named by --policy, or the settings' one."""
    from pipeline.policy import load_policy

    return load_policy(path or settings().policy_path)


def registry_root(path: Path | None) -> Path:
    return path or settings().data_dir / "models"


def runtime_under(policy: Path | None) -> Runtime:
    """`runtime()`, under the policy --policy names when it names one."""
    from pipeline.runtime import Runtime

    rt = Runtime(settings(), policy=policy_at(policy) if policy is not None else None)
    rt.db.upgrade()
    return rt


def when(text: str | None, flag: str) -> dt.datetime | None:
    """A date or ISO date-time from the command line (UTC unless it says otherwise)."""
    import datetime as dt

    if text is None:
        return None
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: give a date (2026-12-01) or an ISO "
                              "date-time (2026-12-01T08:00:00+00:00)") from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at
