"""`lookfirst score` and `lookfirst batch`: images in, decisions out (one by one, or a whole
folder or manifest as a resumable batch job with Parquet results)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from models.errors import InvalidArgument
from pipeline.cli._common import (
    Exit,
    JsonOpt,
    commands,
    emit,
    err,
    guarded,
    out,
    runtime,
    settings,
)

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
        raise InvalidArgument("--upload-id names one upload; give one path")
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
                  f"{d['error']['detail']}", highlight=False, soft_wrap=True)
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
    source: Annotated[str, typer.Argument(
        help="A folder, a JSONL / CSV / Parquet manifest (path or url, upload_id, account_id, "
             "context), or an fsspec URL of either (file://, s3://, gs://).")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Output folder of Parquet parts (default: under the data dir, named "
                      "after SOURCE, so the same command resumes the same job).")] = None,
    engine: Annotated[str, typer.Option(help="local (worker processes) or ray.")] = "local",
    workers: Annotated[int | None, typer.Option(
        help="Worker processes or Ray actors (default LOOKFIRST_BATCH_WORKERS; 0 = one per "
             "core).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Go on with a job this output already holds (after a crash, kill -9 "
                         "or Ctrl-C): nothing committed is scored again.")] = False,
    model: Annotated[str | None, typer.Option(
        help="auto (the fastest variant whose measured agreement with fp32 meets the bar), "
             "fp32, ov-bf16 or int8-mixed (default LOOKFIRST_MODEL_VARIANT).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per model call and decisions per transaction (default "
             "LOOKFIRST_BATCH_JOB_SIZE).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster (default: start a local Ray).")] = None,
    as_json: JsonOpt = False,
    part_rows: Annotated[int | None, typer.Option(hidden=True)] = None,
    no_measure: Annotated[bool, typer.Option(
        "--no-measure", hidden=True, help="Never measure a variant here (fp32 until one is "
                                          "measured).")] = False,
    trace: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> int:
    """Score a folder or manifest into the review store, exactly once, with Parquet results
    (a backfill, or a rescore after a model change); resumable."""
    from pipeline.batch.errors import UnknownEngine
    from pipeline.batch.sources import open_source
    from pipeline.batch.workers import JobOptions, LocalWorkers, plan_job
    from pipeline.policy import load_policy
    from pipeline.runtime import Runtime

    if engine not in ("local", "ray"):
        raise UnknownEngine(f"unknown engine {engine!r}: local or ray")
    options = JobOptions(engine=engine,  # type: ignore[arg-type]
                         workers=workers, batch_size=batch_size, model=model, resume=resume,
                         part_rows=part_rows, measure_model=not no_measure, trace=trace,
                         ray_address=ray_address, progress=None if not as_json else False)
    # progress as log lines when stderr is not a terminal (CI logs, cron mail)
    logging.getLogger("pipeline.batch").setLevel(logging.INFO)
    cfg = settings()
    policy = load_policy(cfg.policy_path)
    open_source(source)  # a missing or unsupported source is refused before any work starts
    out_dir = out_dir or default_output(cfg.data_dir, source)
    again = " ".join(["lookfirst batch", source, "--out", str(out_dir), "--resume"])
    pool: LocalWorkers | None = None
    rt: Runtime | None = None
    try:
        if options.engine == "local":
            # started first: their imports and model loads overlap opening the database
            pool = LocalWorkers(plan_job(cfg, policy, options))
        from pipeline.batch.engine import run_job  # Parquet, fsspec: while the workers load

        rt = Runtime(cfg, policy=policy)
        rt.db.upgrade()  # idempotent: a fresh laptop needs no separate step
        result = run_job(rt, source, out_dir, options, workers=pool)
    except KeyboardInterrupt:
        detail = (f"interrupted: every decision recorded so far is committed, with its rows "
                  f"in {out_dir}; to go on: {again}")
        if as_json:
            emit({"error": {"code": "batch.interrupted", "detail": detail}}, True)
        else:
            err.print(f"[yellow]{detail}[/yellow]", highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    finally:
        if pool is not None:
            pool.close()
        if rt is not None:
            rt.close()
    later = result.counters.get("unfinished", 0)
    unfinished = None
    if later:
        shown = ", ".join(result.summary["last_run"].get("unfinished_examples", []))
        unfinished = {"code": "batch.unfinished", "detail": (
            f"{later} row(s) could not be read for now (file.unavailable, after retries: "
            f"{shown}{', ...' if later > 5 else ''}); they have no result yet; to try them "
            f"again: {again}")}
    if as_json:
        emit({**result.summary, "out": str(out_dir),
              **({"error": unfinished} if unfinished else {})}, True)
    else:
        _print_summary(result.summary, out_dir)
        if unfinished:
            err.print(f"[yellow]{unfinished['detail']}[/yellow]", highlight=False,
                      soft_wrap=True)
    # 3: a dependency (the storage the files are on) failed; the job is not done
    return Exit.DEPENDENCY if unfinished else Exit.OK


#: what a shell reports for a program ended by Ctrl-C (128 + SIGINT)
EXIT_INTERRUPTED = 130


def default_output(data_dir: Path, source: str) -> Path:
    """Where a job's results go without --out: one folder per source, so that running the
    same command again (with --resume) finds the same job."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.rstrip("/").rsplit("/", 1)[-1]).strip("-.")
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return data_dir / "batch" / f"{name or 'source'}-{digest}.parquet"


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    def say(text: str) -> None:
        out.print(text, highlight=False, soft_wrap=True)

    run = summary.get("last_run", {})
    seconds = float(run.get("seconds") or 0)
    rate = f", {run.get('to_model', 0) / seconds:.1f} images/s" if seconds else ""
    say(f"[bold]{summary['rows']}[/bold] rows, {summary['decided']} decided "
        f"({summary['already_scored']} already scored before), "
        f"{sum(summary['errors'].values())} errors; model {summary['model']}, policy "
        f"{summary['policy_version']}")
    for key in ("outcomes", "queues", "errors"):
        if summary[key]:
            say(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in summary[key].items()))
    say(f"  this run: {run.get('to_model', 0)} scored, {run.get('from_store', 0)} answered "
        f"from the store, {run.get('skipped', 0)} already in the output; {seconds:.1f} s{rate}")
    say(f"  results: {out_dir} (Parquet; the summary in _summary.json)")
