"""`lookfirst decisions show`: the statement of reasons for one decision."""

from __future__ import annotations

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, out, runtime

app = group("decisions", "Decisions and statements of reasons.")


@app.command("show")
@guarded
def decisions_show(decision: str, as_json: JsonOpt = False) -> int:
    """The statement of reasons: what was detected, by which model and policy, what context
    moved the thresholds, who reviewed, what was decided, how to appeal."""
    rt = runtime()
    with rt.db.transaction() as s:
        sor = rt.review.statement_of_reasons(s, decision)
    if as_json:
        emit(sor, True)
    else:
        from pipeline.cli._render import how_to_appeal, statement_panel

        out.print(statement_panel(sor))
        for line in how_to_appeal(sor):
            out.print(line, highlight=False, soft_wrap=True)
    return Exit.OK
