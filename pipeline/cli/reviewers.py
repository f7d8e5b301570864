"""`lookfirst reviewers ...`: who reviews, in which queues, with which roles, and what each
reviewer can claim.  Queues and roles change independently; every change is audited with the
operator who made it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from pipeline.auth import operator
from pipeline.cli._common import Exit, JsonOpt, emit, err, group, guarded, out, runtime
from pipeline.errors import PipelineError

app = group("reviewers", "Reviewers: their queues, roles, and what they can claim.")

QueueOpt = Annotated[list[str] | None, typer.Option(
    "--queue", help="A queue they may work (repeatable).")]
RoleOpt = Annotated[list[str] | None, typer.Option(
    "--role", help="A role a queue may need, e.g. senior, medical (repeatable).")]


class NothingToChange(PipelineError):
    """Name at least one --queue or --role."""

    code = "reviewers.nothing_to_change"


def _after(reviewer: str, as_json: bool) -> int:
    """Print the reviewer as they now stand, and warn about queues they cannot claim from."""
    rt = runtime()
    with rt.db.transaction() as s:
        row = rt.review.list_reviewers(s, reviewer)[0]
    if as_json:
        emit(row, True)
        return Exit.OK
    print_reviewers([row])
    warn_blocked(row)
    return Exit.OK


def warn_blocked(row: dict[str, Any]) -> None:
    for b in row["blocked"]:
        err.print(f"[yellow]warning[/yellow]: queue {b['queue']!r} needs role "
                  f"{b['needs_role']!r}, which {row['id']!r} lacks: they cannot claim from it "
                  f"until `lookfirst reviewers grant {row['id']} --role {b['needs_role']}`",
                  highlight=False, soft_wrap=True)
    if not row["active"]:
        err.print(f"[yellow]warning[/yellow]: {row['id']!r} is deactivated and can claim "
                  f"nothing (`lookfirst reviewers add {row['id']}` makes them active again)",
                  highlight=False, soft_wrap=True)


def print_reviewers(rows: list[dict[str, Any]]) -> None:
    t = Table("reviewer", "active", "roles", "queues", "can claim from", "blocked (needs role)")
    for r in rows:
        t.add_row(r["id"], "yes" if r["active"] else "[red]no[/red]",
                  ", ".join(r["roles"]) or "–", ", ".join(r["queues"]) or "–",
                  ", ".join(r["can_claim"]) or "[red]nothing[/red]",
                  ", ".join(f"{b['queue']} ({b['needs_role']})" for b in r["blocked"]) or "–")
    out.print(t)


@app.command("add")
@guarded
def reviewers_add(
    reviewer: Annotated[str, typer.Argument(help="The reviewer's id.")],
    queue: QueueOpt = None,
    role: RoleOpt = None,
    name: Annotated[str | None, typer.Option(help="Display name (default: the id).")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Register a reviewer, or for one already registered grant these queues and roles (and
    make them active again)."""
    rt = runtime()
    with rt.db.transaction() as s:
        rt.review.add_reviewer(s, reviewer_id=reviewer, queues=queue or [], roles=role or [],
                               display_name=name, actor=operator.current_actor())
    return _after(reviewer, as_json)


@app.command("grant")
@guarded
def reviewers_grant(
    reviewer: Annotated[str, typer.Argument(help="A registered reviewer's id.")],
    queue: QueueOpt = None,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Give a reviewer more queues and/or roles."""
    return _change("grant", reviewer, queue, role, as_json)


@app.command("revoke")
@guarded
def reviewers_revoke(
    reviewer: Annotated[str, typer.Argument(help="A registered reviewer's id.")],
    queue: QueueOpt = None,
    role: RoleOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Take queues and/or roles away from a reviewer."""
    return _change("revoke", reviewer, queue, role, as_json)


def _change(how: Literal["grant", "revoke"], reviewer: str, queue: list[str] | None,
            role: list[str] | None, as_json: bool) -> int:
    if not queue and not role:
        raise NothingToChange()
    rt = runtime()
    with rt.db.transaction() as s:
        change = rt.review.grant if how == "grant" else rt.review.revoke
        change(s, reviewer_id=reviewer, queues=queue or [], roles=role or [],
               actor=operator.current_actor())
    return _after(reviewer, as_json)


@app.command("deactivate")
@guarded
def reviewers_deactivate(
    reviewer: Annotated[str, typer.Argument(help="A registered reviewer's id.")],
    as_json: JsonOpt = False,
) -> int:
    """A reviewer who leaves: they can claim, see and decide nothing more (their record and
    queues are kept; `reviewers add` makes them active again)."""
    rt = runtime()
    with rt.db.transaction() as s:
        rt.review.deactivate_reviewer(s, reviewer_id=reviewer, actor=operator.current_actor())
    return _after(reviewer, as_json)


@app.command("list")
@guarded
def reviewers_list(as_json: JsonOpt = False) -> int:
    """Every reviewer: roles, queues, and the queues they can claim from."""
    rt = runtime()
    with rt.db.transaction() as s:
        rows = rt.review.list_reviewers(s)
    if as_json:
        emit(rows, True)
    else:
        print_reviewers(rows)
    return Exit.OK


@app.command("show")
@guarded
def reviewers_show(
    reviewer: Annotated[str, typer.Argument(help="A registered reviewer's id.")],
    as_json: JsonOpt = False,
) -> int:
    """One reviewer: what they can claim, and why not from the rest of their queues."""
    return _after(reviewer, as_json)
