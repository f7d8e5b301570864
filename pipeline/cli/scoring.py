"""`lookfirst score` and `lookfirst batch`: images in, decisions out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli._common import Exit, JsonOpt, commands, emit, err, guarded, out, runtime
from pipeline.errors import PipelineError

app = commands()


@app.command()
@guarded
def score(
    paths: Annotated[list[Path], typer.Argument(help="Image files to score.")],
    context: Annotated[
        list[str] | None, typer.Option("--context", "-c", help="key=value, repeatable.")
    ] = None,
    account: Annotated[str, typer.Option(help="The uploading account.")] = "acct-local",
    upload_id: Annotated[
        str | None, typer.Option(help="The platform's upload id (default: from the file).")
    ] = None,
    as_json: JsonOpt = False,
) -> int:
    """Score images with their context, route them, and print one result per image."""
    from pipeline.policy import Context
    from pipeline.scoring import Orchestrator, UploadRequest

    ctx = Context.from_pairs(context or [])
    if upload_id is not None and len(paths) > 1:
        raise PipelineError("--upload-id names one upload; give one path")
    rt = runtime()
    reqs = [
        UploadRequest(
            account_id=account,
            external_id=upload_id or f"file:{p.resolve()}",
            context=ctx,
            source="cli",
            path=p,
            label=str(p),
        )
        for p in paths
    ]
    with Orchestrator(rt) as orch:
        results = orch.score(reqs)
    failed = 0
    for r in results:
        failed += not r.ok
        if as_json:
            emit(r.as_dict(), True)
        else:
            _print_scored(r.as_dict())
    return Exit.USER_ERROR if failed else Exit.OK


def _print_scored(d: dict[str, Any]) -> None:
    if "error" in d:
        err.print(f"[red]✗[/red] {d['input']}: [bold]{d['error']['code']}[/bold] "
                  f"{d['error']['detail']}", highlight=False)
        return
    colour = {"allow": "green", "hold": "yellow", "review": "magenta"}[d["outcome"]]
    top = sorted(d["scores"].items(), key=lambda kv: -kv[1])[:3]
    scores = ", ".join(f"{k} {v:.2f}" for k, v in top)
    where = f" → queue [bold]{d['queue']}[/bold] item {d['review_item_id']}" if d["queue"] else ""
    again = " (already scored)" if d["already_scored"] else ""
    out.print(f"[{colour}]{d['outcome']:<6}[/{colour}] {d['input']}{where}{again}\n"
              f"        {scores}  [dim]{d['model_version']} · policy {d['policy_version']}[/dim]",
              highlight=False)
    for note in d["reasons"].get("routing", []):
        out.print(f"        [dim]· {note}[/dim]", highlight=False)


@app.command()
@guarded
def batch(
    manifest: Annotated[Path, typer.Argument(help="JSONL: path, upload_id, account_id, context.")],
    output: Annotated[Path | None, typer.Option("--out", help="Write results as JSONL.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Score every image of a manifest (the batch job), with a progress bar."""
    from rich.progress import Progress

    from pipeline.manifest import read_manifest
    from pipeline.scoring import Orchestrator

    rt = runtime()
    reqs = list(read_manifest(manifest))
    counts: dict[str, int] = {}
    sink = open(output, "w") if output else None  # noqa: SIM115
    try:
        with Orchestrator(rt) as orch, Progress(console=err, transient=as_json) as bar:
            task = bar.add_task("scoring", total=len(reqs))
            for r in orch.iter_score(reqs):
                d = r.as_dict()
                key = d["error"]["code"] if "error" in d else d["outcome"]
                counts[key] = counts.get(key, 0) + 1
                if sink:
                    sink.write(json.dumps(d, default=str) + "\n")
                if as_json:
                    emit(d, True)
                else:
                    bar.console.print(f"{key:<8} {d['input']}"
                                      + (f" → {d['queue']}" if d.get("queue") else ""),
                                      highlight=False)
                bar.advance(task)
    finally:
        if sink:
            sink.close()
    if not as_json:
        out.print("summary: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return Exit.OK
