"""`lookfirst policy ...`: validate a policy file, backtest a candidate on stored decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, out, runtime

app = group("policy", "Moderation policies.")


@app.command("validate")
@guarded
def policy_validate(path: Path, as_json: JsonOpt = False) -> int:
    """Load and validate a policy file; errors name the field and line."""
    from pipeline.policy import load_policy

    p = load_policy(path)
    d = {"ok": True, "name": p.name, "version": p.version,
         "categories": sorted(p.categories), "queues": sorted(p.queues)}
    if as_json:
        emit(d, True)
    else:
        out.print(f"[green]valid[/green]: policy {p.name} version {p.version}, "
                  f"{len(p.categories)} categories, {len(p.queues)} queues", highlight=False)
    return Exit.OK


@app.command("backtest")
@guarded
def policy_backtest(
    candidate: Annotated[Path, typer.Argument(help="The candidate policy file.")],
    as_json: JsonOpt = False,
) -> int:
    """Replay stored scores and contexts under a candidate policy: what would change."""
    from pipeline.backtest import backtest
    from pipeline.policy import load_policy

    rt = runtime()
    cand = load_policy(candidate)
    with rt.db.transaction() as s:
        report = backtest(s, current=rt.policy, candidate=cand)
    d = report.as_dict()
    if as_json:
        emit(d, True)
        return Exit.OK
    out.print(f"backtest of [bold]{d['candidate']}[/bold] on {d['decisions']} stored "
              f"decisions (in force: {d['current']})", highlight=False)
    t = Table("recorded outcome", "candidate outcome", "decisions")
    for row in d["transitions"]:
        style = "" if row["now"] == row["candidate"] else "bold"
        t.add_row(row["now"], row["candidate"], str(row["count"]), style=style)
    out.print(t)
    q = Table("queue", "volume now", "volume under candidate")
    for name, v in d["queue_volume"].items():
        q.add_row(name, str(v["now"]), str(v["candidate"]))
    out.print(q)
    h = d["human_labels"]
    out.print(f"decided by people: {h['violating']} violating, {h['benign']} benign; the "
              f"candidate would allow {h['violating_now_allowed']} violating (false "
              f"negatives) and flag {h['benign_now_flagged']} benign (held: "
              f"{h['benign_now_held']})", highlight=False)
    m = d["medical_sharing"]
    out.print(f"medically shared uploads: {m['total']}; flagged now {m['flagged_now']}, "
              f"under candidate {m['flagged_candidate']}", highlight=False)
    return Exit.OK
