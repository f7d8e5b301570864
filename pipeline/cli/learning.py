"""The learning loop's own commands: `dataset export` (reviewers' verdicts to a labelled
manifest) and `retrain` (that dataset to a shadow model); `models compare|promote` are in
`registry`, the logic in pipeline.learning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli._common import (
    BarProgress,
    Exit,
    JsonOpt,
    PolicyOpt,
    RegistryOpt,
    commands,
    emit,
    group,
    guarded,
    out,
    progress_bar,
    registry_root,
    runtime_under,
    when,
)

app = commands()
dataset_app = group("dataset", "Labelled datasets from reviewers' verdicts.")

SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="Only what people decided from this date (or ISO date-time, UTC) on.")]


@dataset_app.command("export")
@guarded
def dataset_export(
    out_dir: Annotated[Path, typer.Option("--out", help="New (or empty) directory for "
                                          "manifest.jsonl, dataset.json and images/.")],
    since: SinceOpt = None,
    val: Annotated[float, typer.Option("--val", min=0.0, max=1.0, help="Share of clusters "
                                       "in the val split.")] = 0.15,
    calib: Annotated[float, typer.Option("--calib", min=0.0, max=1.0, help="... in calib.")]
    = 0.10,
    test: Annotated[float, typer.Option("--test", min=0.0, max=1.0, help="... in test (the "
                                        "rest is train).")] = 0.15,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Reviewed uploads to a labelled manifest: labels from the latest decided verdicts,
    context, provenance (verdict ids), one row per content, split so that near-duplicates
    never straddle it.  The originals are copied (never previews): an audited act."""
    from pipeline.learning.dataset import export_dataset

    rt = runtime_under(policy)
    res = export_dataset(rt, out_dir, since=when(since, "--since"), shares={
        "train": round(1.0 - val - calib - test, 6), "val": val, "calib": calib, "test": test})
    if as_json:
        emit(res.as_dict(), True)
        return Exit.OK
    out.print(f"[green]exported[/green] {res.rows} rows to {res.manifest} (sha256 "
              f"{res.manifest_sha256[:12]}…): splits {res.splits}; labels {res.labels}; "
              f"{res.near_duplicate_clusters} near-duplicate clusters kept whole"
              + (f"; left out {res.skipped}" if res.skipped else ""), highlight=False)
    return Exit.OK


@app.command("retrain")
@guarded
def retrain_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="New directory for dataset/, run/, "
                                          "evaluation/ and model/.")],
    since: SinceOpt = None,
    dataset: Annotated[Path | None, typer.Option(
        "--dataset", help="Train on a dataset `dataset export` wrote (its directory) instead "
        "of exporting one now.")] = None,
    version: Annotated[str | None, typer.Option(
        help="Registry version of the new model (default: rYYYYMMDD.HHMMSS).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default classifier-ARCH).")]
    = None,
    arch: Annotated[str | None, typer.Option(help="Default efficientnet_lite0.")] = None,
    init: Annotated[str | None, typer.Option(help="As for `train`.")] = None,
    size: Annotated[int | None, typer.Option(help="Input side in pixels (default 224).")]
    = None,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    patience: Annotated[int, typer.Option(min=1)] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=0)] = 0,
    workers: Annotated[int, typer.Option(min=0)] = 0,
    registry: RegistryOpt = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Verdicts to a shadow model: export, train, calibrate, evaluate, export, register.

    Exports the dataset (or takes --dataset), trains (the quality gate applies: a model that
    did not learn ends here, exit 1), evaluates on the test split, exports to ONNX and
    registers the model as a shadow."""
    from models.classifier.registry import ModelRegistry
    from pipeline.learning.retrain import RetrainOptions, retrain

    rt = runtime_under(policy)
    with progress_bar(as_json) as bar:
        res = retrain(rt, out_dir, registry=ModelRegistry(registry_root(registry)),
                      since=when(since, "--since"), dataset=dataset, version=version,
                      options=RetrainOptions(arch=arch, init=init, size=size, epochs=epochs,
                                             patience=patience, batch_size=batch_size, lr=lr,
                                             seed=seed, threads=threads, workers=workers,
                                             name=name),
                      progress=BarProgress(bar))
    if as_json:
        emit(res.as_dict(), True)
        return Exit.OK
    tr = res.train
    out.print(f"[green]retrained[/green] {res.registered.ref} ({res.registered.model_version}) "
              f"is now a [yellow]shadow[/yellow]: {res.dataset.rows} rows, best epoch "
              f"{tr['best_epoch']} of {tr['epochs_run']} ({tr['seconds_per_epoch']:.1f} s per "
              "epoch)", highlight=False)
    out.print("  validation ROC AUC " + ", ".join(f"{c} {a:.3f}" for c, a in
                                                   tr["val_auc"].items()), highlight=False)
    if res.evaluation:
        out.print(f"  test split: macro ROC AUC {res.evaluation['macro_roc_auc']:.3f}; "
                  f"report {res.evaluation['report']}", highlight=False)
    out.print(f"  next: lookfirst models compare {res.registered.ref} --data "
              f"{res.dataset.manifest}", highlight=False)
    return Exit.OK
