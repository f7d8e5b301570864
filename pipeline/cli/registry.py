"""`lookfirst models ...`: the model registry (list, register, activate, shadow, deactivate) and
the checked way to change the active model: `compare` a candidate with it, `promote` it unless
it is worse on a protected segment (pipeline.learning holds the logic)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli._common import (
    BarProgress,
    Exit,
    ForceOpt,
    JsonOpt,
    PolicyOpt,
    RegistryOpt,
    emit,
    group,
    guarded,
    out,
    progress_bar,
    registry_root,
    runtime_under,
    settings,
    when,
)

if TYPE_CHECKING:
    from models.classifier.registry import Status

models_app = group("models", "The model registry: active and shadow models.")


@models_app.command("list")
@guarded
def models_list(registry: RegistryOpt = None, as_json: JsonOpt = False) -> int:
    """Registered models, their status and version."""
    from rich.table import Table

    from models.classifier.registry import ModelRegistry

    entries = ModelRegistry(registry_root(registry)).entries()
    if as_json:
        emit([e.as_dict() for e in entries], True)
        return Exit.OK
    t = Table("model", "status", "model version", "arch", "categories", "registered")
    for e in entries:
        colour = {"active": "green", "shadow": "yellow"}.get(e.status, "dim")
        t.add_row(e.ref, f"[{colour}]{e.status}[/{colour}]", e.model_version, e.arch,
                  ", ".join(e.categories), e.registered_at)
    out.print(t)
    return Exit.OK


@models_app.command("register")
@guarded
def models_register(
    model: Annotated[Path, typer.Argument(help="An exported model directory.")],
    version: Annotated[str | None, typer.Option(help="Version label (default: sha256 "
                                                "prefix).")] = None,
    force: ForceOpt = False,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Add an exported model (inactive until activated or shadowed)."""
    from models.classifier.registry import ModelRegistry

    entry = ModelRegistry(registry_root(registry)).register(model, version=version,
                                                              force=force)
    emit(entry.as_dict() if as_json else f"registered {entry.ref} ({entry.model_version})",
         as_json)
    return Exit.OK


def _set_status(ref: str, status: Status, registry: Path | None, as_json: bool,
                force: bool = False) -> int:
    from models.classifier.registry import ModelRegistry

    entry = ModelRegistry(registry_root(registry)).set_status(ref, status, force=force)
    emit(entry.as_dict() if as_json else f"{entry.ref} is now {entry.status}", as_json)
    return Exit.OK


RefArg = Annotated[str, typer.Argument(help="NAME@VERSION (or NAME with one version).")]


@models_app.command("activate")
@guarded
def models_activate(ref: RefArg, force: ForceOpt = False, registry: RegistryOpt = None,
                    as_json: JsonOpt = False) -> int:
    """Make a model the one whose scores decide outcomes (the previous one shadows), with no
    comparison: `models promote` is the checked way."""
    return _set_status(ref, "active", registry, as_json, force)


@models_app.command("shadow")
@guarded
def models_shadow(ref: RefArg, force: ForceOpt = False, registry: RegistryOpt = None,
                  as_json: JsonOpt = False) -> int:
    """Score live traffic with a model for comparison, without affecting outcomes."""
    return _set_status(ref, "shadow", registry, as_json, force)


@models_app.command("deactivate")
@guarded
def models_deactivate(ref: RefArg, registry: RegistryOpt = None, as_json: JsonOpt = False) -> int:
    """Stop scoring with a model (it stays registered)."""
    return _set_status(ref, "inactive", registry, as_json)



CandidateArg = Annotated[str | None, typer.Argument(
    help="NAME@VERSION of the candidate (default: the one shadow model).")]
DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="A labelled manifest whose --split both models are evaluated on (e.g. an "
    "exported dataset's test split).")]
SplitOpt = Annotated[str, typer.Option(help="The evaluation split of --data.")]
LimitOpt = Annotated[int, typer.Option(min=1, help="At most this many stored decisions.")]


@models_app.command("compare")
@guarded
def models_compare(
    candidate: CandidateArg = None,
    against: Annotated[str | None, typer.Option(
        help="NAME@VERSION to compare with (default: the active model).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Traffic from this date (default: since the candidate became a shadow, else "
        "the last 30 days).")]
    = None,
    until: Annotated[str | None, typer.Option(help="Traffic before this date.")] = None,
    limit: LimitOpt = 20_000,
    data: DataOpt = None,
    split: SplitOpt = "test",
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Report directory (default: DATA_DIR/comparisons/CANDIDATE).")] = None,
    threads: Annotated[int, typer.Option(min=0)] = 0,
    registry: RegistryOpt = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """The candidate against the active model on recent traffic (outcome changes per queue
    and per context segment, and against people's verdicts) and on an evaluation set; writes
    a Markdown report with plots and compare.json."""
    from models.classifier.registry import ModelRegistry
    from pipeline.learning.compare import compare
    from pipeline.learning.report import write_report

    rt = runtime_under(policy)
    reg = ModelRegistry(registry_root(registry))
    with progress_bar(as_json) as bar:
        cmp = compare(rt, reg, candidate=candidate, active=against,
                      since=when(since, "--since"), until=when(until, "--until"),
                      limit=limit, data=data, split=split, threads=threads,
                      progress=BarProgress(bar))
    target = out_dir or settings().data_dir / "comparisons" / cmp.candidate.entry.ref.replace(
        "@", "-")
    report, json_path = write_report(cmp, target)
    headline = cmp.headline()
    if as_json:
        emit({"headline": headline, "report": str(report), "json": str(json_path)}, True)
        return Exit.OK
    colour = "green" if headline["promotable"] else "red"
    out.print(f"[{colour}]{headline['text']}[/{colour}]", highlight=False)
    out.print(f"report: {report}", highlight=False)
    return Exit.OK


@models_app.command("promote")
@guarded
def models_promote(
    candidate: CandidateArg = None,
    since: Annotated[str | None, typer.Option(
        help="Traffic from this date (default: since the candidate became a shadow, else "
        "the last 30 days).")]
    = None,
    limit: LimitOpt = 20_000,
    data: DataOpt = None,
    split: SplitOpt = "test",
    force: Annotated[bool, typer.Option(
        "--force", help="Promote although the candidate is worse on a protected segment (or "
        "failed its quality gate); needs --reason; audited.")] = False,
    reason: Annotated[str | None, typer.Option(
        help="Why (required with --force); recorded in the audit log and the registry.")]
    = None,
    threads: Annotated[int, typer.Option(min=0)] = 0,
    registry: RegistryOpt = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Make the candidate the active model (the old one shadows it) unless it is worse than
    the active one on a protected segment of the policy (medically shared uploads by
    default): exit 1 then, unless --force --reason.  Audited."""
    from models.classifier.registry import ModelRegistry
    from pipeline.learning.compare import compare
    from pipeline.learning.errors import NoModelToCompare, ReasonRequired
    from pipeline.learning.promote import promote

    if force and not (reason or "").strip():
        raise ReasonRequired("--force needs --reason: why this model goes live anyway (it is "
                             "audited)")
    rt = runtime_under(policy)
    reg = ModelRegistry(registry_root(registry))
    if candidate is None:
        shadows = reg.shadows()
        if len(shadows) != 1:
            raise NoModelToCompare("name the model to promote (there is not exactly one "
                                   "shadow)")
        candidate = shadows[0].ref
    cmp = None
    if reg.active() is not None:
        with progress_bar(as_json) as bar:
            cmp = compare(rt, reg, candidate=candidate, since=when(since, "--since"),
                          limit=limit, data=data, split=split, threads=threads,
                          progress=BarProgress(bar))
    done = promote(rt, reg, candidate, comparison=cmp, force=force, reason=reason)
    d = done.as_dict()
    if cmp is not None:
        d["headline"] = cmp.headline()
    if as_json:
        emit(d, True)
        return Exit.OK
    how = "[bold red]forced[/bold red] " if done.forced else ""
    out.print(f"{how}[green]promoted[/green] {done.entry.ref} ({done.entry.model_version}); "
              f"previous: {done.previous or 'none'}", highlight=False)
    if cmp is not None:
        out.print(f"  {cmp.headline()['text']}", highlight=False)
    return Exit.OK
