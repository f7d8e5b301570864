"""`lookfirst actions ...`: actions as they are proposed, approved and executed."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, out, runtime

app = group("actions", "Actions: proposed, approved, executed.")


@app.command("list")
@guarded
def actions_list(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    decision: Annotated[str | None, typer.Option(help="Only this decision.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """List actions and where they stand."""
    rt = runtime()
    with rt.db.transaction() as s:
        rows = rt.review.list_actions(s, status=status, decision_id=decision)
    if as_json:
        emit(rows, True)
        return Exit.OK
    from pipeline.cli._render import actions_table

    t = actions_table(rows, with_account=True)
    out.print(t)
    return Exit.OK


@app.command("execute")
@guarded
def actions_execute(
    action: Annotated[int | None, typer.Argument(help="One action; default: all that are due.")]
    = None,
    actor: Annotated[str, typer.Option(help="Who runs the executor.")] = "cli:executor",
    as_json: JsonOpt = False,
) -> int:
    """Execute approved actions (through the outbox).  A proposal is refused.  The audit
    events record this operator account (`os:user@host`)."""
    from pipeline.auth import operator

    rt = runtime()
    with rt.db.transaction() as s:
        if action is not None:
            done = [rt.review.execute(s, action_id=action, actor=actor,
                                      credential=operator.current().credential)]
        else:
            done = rt.review.execute_due(s, actor=actor)
        rows = [{"id": a.id, "kind": a.kind, "status": a.status} for a in done]
    if as_json:
        emit(rows, True)
    else:
        for r in rows:
            out.print(f"executed action {r['id']}: {r['kind']}", highlight=False)
        if not rows:
            out.print("nothing is due")
    return Exit.OK
