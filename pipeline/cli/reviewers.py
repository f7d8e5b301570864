"""`lookfirst reviewers ...`: who reviews, in which queues, with which roles."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, runtime

app = group("reviewers", "Reviewers and their queues.")


@app.command("add")
@guarded
def reviewers_add(
    reviewer: str,
    queue: Annotated[list[str], typer.Option(help="A queue they may work, repeatable.")],
    role: Annotated[list[str] | None, typer.Option(help="A role, e.g. senior, medical.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Register a reviewer (or grant more queues/roles)."""
    rt = runtime()
    with rt.db.transaction() as s:
        rt.review.add_reviewer(s, reviewer_id=reviewer, queues=queue, roles=role or [])
        rows = [r for r in rt.review.list_reviewers(s) if r["id"] == reviewer]
    emit(rows[0], as_json)
    return Exit.OK


@app.command("list")
@guarded
def reviewers_list(as_json: JsonOpt = False) -> int:
    """List reviewers, their queues and roles."""
    rt = runtime()
    with rt.db.transaction() as s:
        emit(rt.review.list_reviewers(s), as_json)
    return Exit.OK
