"""The trainable classifier's commands: train, evaluate, export, quantize and doctor (the model
registry's are in `registry`, the learning loop's in `learning`).

torch is imported only by the commands that need it (inside `torch_extra()`, which names the
extra when it is missing), so the rest of the CLI starts fast and works without it.  The policy
supplies the categories a model is trained for and the thresholds it is judged at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli._common import (
    BarProgress,
    Exit,
    ForceOpt,
    JsonOpt,
    PolicyOpt,
    RegistryOpt,
    commands,
    emit,
    guarded,
    out,
    progress_bar,
    settings,
)
from pipeline.cli._common import policy_at as _policy
from pipeline.cli._common import registry_root as _registry_root

app = commands()


# ---- commands -----------------------------------------------------------------------------------
@app.command("train")
@guarded
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="Labelled manifest (.jsonl or .csv).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (checkpoints, "
                                          "model.pt).")],
    arch: Annotated[str | None, typer.Option("--arch", help="efficientnet_lite0 (default; "
                                             "ImageNet weights installed offline), "
                                             "mobilenet_v3_large, mobilenet_v3_small, "
                                             "efficientnet_b0, resnet18, resnet50, "
                                             "convnext_tiny.")] = None,
    init: Annotated[str | None, typer.Option(
        "--init", help="Initial weights: default the architecture's offline pretrained "
        "weights (efficientnet_lite0) or none; 'none' (from scratch), 'pretrained', "
        "'imagenet' (offline where shipped, else torchvision's cache: needs the network), or "
        "a local state_dict/checkpoint file.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping may end "
                                        "sooner).")] = 30,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without validation "
                                          "improvement before stopping.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for weights, shuffling and augmentation.")] = 0,
    size: Annotated[int | None, typer.Option(help="Input side in pixels (default 224).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    workers: Annotated[int, typer.Option(min=0, help="Data loader processes.")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0: torch's default).")]
    = 0,
    category: Annotated[list[str] | None, typer.Option(
        help="Train only these policy categories (repeatable; default: every category the "
        "manifest labels).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default classifier-ARCH).")]
    = None,
    no_pos_weight: Annotated[bool, typer.Option("--no-pos-weight", help="Do not reweight "
                                                "rare categories.")] = False,
    no_augment: Annotated[bool, typer.Option("--no-augment")] = False,
    select_on: Annotated[str, typer.Option(
        "--select-on", help="What picks the best epoch and stops early: roc_auc (mean over "
        "categories), average_precision, or loss.")] = "roc_auc",
    min_auc: Annotated[float, typer.Option(
        "--min-auc", min=0.0, max=1.0, help="Quality gate: every category's ROC AUC "
        "(validation and calibration split) must reach this.")] = 0.6,
    allow_weak: Annotated[bool, typer.Option(
        "--allow-weak", help="A run below the gate warns and exits 0 instead of failing; its "
        "model is still not registrable without --force.")] = False,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Train a multi-label classifier on a labelled manifest, calibrated on held-out data.

    Starts from EfficientNet-Lite0's ImageNet weights unless told otherwise; keeps the epoch
    with the best validation ROC AUC; fails (exit 1) when a category is not clearly better
    than chance. Writes OUT/model.pt (the calibrated best epoch), best.pt, last.pt and
    training.json.
    """
    from models.classifier import torch_extra
    from models.classifier.data import Manifest

    with torch_extra():
        from models.classifier.arch import DEFAULT_ARCH, get_architecture
        from models.classifier.train import TrainConfig, train

    if arch is not None:
        get_architecture(arch)
    pol = _policy(policy)
    manifest = Manifest.load(data)
    cats = manifest.categories_to_learn(tuple(pol.categories), requested=category or (),
                                        source=f"policy {pol.name}")
    cfg = TrainConfig(
        categories=cats, size=size, epochs=epochs, patience=patience,
        batch_size=batch_size, lr=lr, seed=seed, init=init, pos_weight=not no_pos_weight,
        augment=not no_augment, workers=workers, threads=threads, name=name,
        select_on=select_on, min_auc=min_auc, on_weak="warn" if allow_weak else "error",
        arch=arch if arch is not None else DEFAULT_ARCH,
    )
    with progress_bar(as_json) as bar:
        result = train(manifest, cfg, out_dir, progress=BarProgress(bar))
    d = result.as_dict()
    d.pop("history")
    if as_json:
        emit(d, True)
        return Exit.OK
    verdict = ("[green]trained[/green]" if result.registrable
               else "[bold red]NOT REGISTRABLE[/bold red]")
    out.print(f"{verdict} {result.model_path} (best epoch {result.best_epoch} of "
              f"{result.epochs_run}, {result.seconds_per_epoch:.1f} s per epoch)",
              highlight=False)
    for c, auc in result.val_auc.items():
        j = result.calibration.categories.index(c)
        out.print(f"  {c}: val ROC AUC {auc:.3f}, temperature "
                  f"{result.calibration.temperature[j]:.2f}, ECE "
                  f"{result.calibration.ece_before[c]:.3f} → "
                  f"{result.calibration.ece_after[c]:.3f}", highlight=False)
    return Exit.OK


_METRICS = ("precision", "recall", "f1", "fpr", "roc_auc", "ece")


@app.command("evaluate")
@guarded
def evaluate_cmd(
    model: Annotated[str, typer.Option("--model", help="model.pt, an exported model "
                                       "directory, or NAME@VERSION from the registry.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled manifest.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report directory (default: "
                                                 "DATA_DIR/evaluations/MODEL-SPLIT).")] = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    threads: Annotated[int, typer.Option(min=0)] = 0,
    policy: PolicyOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Evaluate a model per category and per context segment at the policy's thresholds.

    Precision, recall, F1 and FPR at the review thresholds in force, PR and ROC curves,
    calibration error; writes a Markdown or HTML report with PNG plots, and JSON.
    """
    from models.classifier.data import SPLITS, Manifest
    from models.classifier.evaluate import REPORT_FORMATS, evaluate, score_samples, write_report
    from models.classifier.registry import load_model
    from models.errors import DatasetError
    from pipeline.policy_tools import thresholds_in_force

    if fmt not in REPORT_FORMATS:
        raise DatasetError("--format must be md or html")
    if split not in SPLITS:
        raise DatasetError(f"--split must be one of {', '.join(SPLITS)}")
    pol = _policy(policy)
    manifest = Manifest.load(data)
    samples = manifest.split(split)
    if not samples:
        raise DatasetError(f"{data}: the {split!r} split is empty")
    scorer = load_model(model, registry=_registry_root(registry), threads=threads)
    cats = [c for c in scorer.categories if c in pol.categories]
    if not cats:
        raise DatasetError(f"the model's categories {list(scorer.categories)} are not in "
                           f"policy {pol.name}")
    with progress_bar(as_json) as bar:
        scored = score_samples(scorer, samples, categories=cats,
                               thresholds=thresholds_in_force(pol), batch_size=batch_size,
                               split=split, progress=BarProgress(bar))
    result = evaluate(scored)
    tag = scorer.version.replace("@sha256:", "-")
    target = out_dir or settings().data_dir / "evaluations" / f"{tag}-{split}"
    report = write_report(result, scored, target, fmt=fmt, notes={
        "model": model, "data": str(data), "policy": f"{pol.name} {pol.version}",
        "data_digest": manifest.digest(),
    })
    summary = {
        "model_version": result["model_version"], "split": split, "n": result["n"],
        "report": str(report.report_path), "json": str(report.json_path),
        "macro_roc_auc": result["macro"]["roc_auc"], "macro_ece": result["macro"]["ece"],
        "headline": result["headline"],
        "per_category": {c: {k: m[k] for k in _METRICS}
                         for c, m in result["per_category"].items()},
    }
    if as_json:
        emit(summary, True)
        return Exit.OK
    from rich.table import Table

    t = Table("category", "precision", "recall", "F1", "FPR", "ROC AUC", "ECE")
    for c, m in summary["per_category"].items():
        t.add_row(c, *(("–" if m[k] is None else f"{m[k]:.3f}") for k in _METRICS))
    out.print(t)
    for h in result["headline"]:
        fpr = "–" if h["image_fpr"] is None else f"{h['image_fpr']:.3f}"
        out.print(f"  benign flagged, {h['segment']}: {h['benign_flagged']}/"
                  f"{h['benign']} (FPR {fpr})", highlight=False)
    out.print(f"report: {report.report_path}", highlight=False)
    return Exit.OK


@app.command("export")
@guarded
def export_cmd(
    model: Annotated[Path, typer.Option("--model", help="The trained model.pt.")],
    out_dir: Annotated[Path, typer.Option("--out", help="New directory for model.onnx + "
                                          "card.json.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the checkpoint's).")]
    = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Manifest whose held-out images the parity check uses.")] = None,
    parity_images: Annotated[int, typer.Option(min=1, help="Images in the parity check.")]
    = 64,
    tolerance: Annotated[float, typer.Option(help="Largest score difference allowed.")] = 1e-4,
    evaluation: Annotated[Path | None, typer.Option(
        help="evaluation.json from `lookfirst evaluate`, summarised into the card.")] = None,
    register_as: Annotated[str | None, typer.Option(
        "--register", help="Also register it in the model registry under this version.")]
    = None,
    force: ForceOpt = False,
    registry: RegistryOpt = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Export a checkpoint to one self-contained ONNX file with its model card.

    The batch dimension is dynamic; a parity check (onnxruntime vs torch: largest score
    difference and identical policy outcomes) must pass before anything is written.
    """
    from models.classifier import torch_extra
    from models.classifier.data import Manifest
    from models.classifier.evaluate import read_summary
    from models.classifier.registry import ModelRegistry
    from pipeline.policy_tools import policy_outcome

    with torch_extra():
        from models.classifier.checkpoint import load_checkpoint
        from models.classifier.export import export, probe_images

    pol = _policy(policy)
    loaded = load_checkpoint(model)
    images = (Manifest.load(data).images(("test", "calib", "val"), parity_images)
              if data else probe_images(min(parity_images, 16)))
    metrics = {"evaluation": read_summary(evaluation)} if evaluation is not None else {}
    result = export(loaded, out_dir, parity_images=images, outcome=policy_outcome(pol),
                    name=name, tolerance=tolerance, metrics=metrics,
                    notes=f"parity outcomes under policy {pol.name} {pol.version}")
    d: dict[str, Any] = {
        "model_version": result.card.version, "onnx": str(result.onnx_path),
        "card": str(result.card_path), "sha256": result.card.onnx.sha256,
        "parity": result.parity.as_dict(),
    }
    if register_as:
        entry = ModelRegistry(_registry_root(registry)).register(out_dir, version=register_as,
                                                                  force=force)
        d["registered"] = entry.as_dict()
    if as_json:
        emit(d, True)
        return Exit.OK
    p = result.parity
    out.print(f"[green]exported[/green] {result.card.version} → {result.onnx_path}\n"
              f"  parity on {p.n} images: max abs diff {p.max_abs_diff:.2e}, "
              f"outcomes identical: {p.outcomes_identical}", highlight=False)
    if register_as:
        out.print(f"  registered as {d['registered']['ref']} (inactive)", highlight=False)
    return Exit.OK


@app.command("quantize")
@guarded
def quantize_cmd(
    model: Annotated[Path, typer.Option("--model", help="An exported model directory.")],
    data: Annotated[Path, typer.Option("--data", help="Manifest: calibration images from "
                                       "train/val, agreement measured on test.")],
    out_dir: Annotated[Path, typer.Option("--out", help="New directory for the int8 model.")],
    calibration_images: Annotated[int, typer.Option(min=1)] = 128,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> int:
    """Quantise an exported model to int8 and measure its agreement with fp32."""
    from models.classifier.data import Manifest
    from models.classifier.quantize import quantize_classifier
    from pipeline.policy_tools import policy_outcome, review_thresholds

    pol = _policy(policy)
    manifest = Manifest.load(data)
    card, agree = quantize_classifier(
        model, out_dir, calibration_images=manifest.images(("train", "val"), calibration_images),
        eval_images=manifest.images(("test",), 10_000), outcome=policy_outcome(pol),
        thresholds=review_thresholds(pol))
    emit({"model_version": card.version, "directory": str(out_dir),
          "agreement_vs_fp32": agree.as_dict()}, as_json)
    return Exit.OK


@app.command("doctor")
@guarded
def doctor_cmd(as_json: JsonOpt = False) -> int:
    """Which devices and execution providers the model backends find and use."""
    from models.doctor import report
    from pipeline.runtime import variant_card_lines, variant_cards

    r = {**report(), "nudenet_variants": variant_cards(settings())}  # batch jobs' and the API's
    if as_json:
        emit(r, True)
        return Exit.OK
    o, t = r["onnxruntime"], r["torch"]
    out.print(f"python {r['python']} on {r['platform']}, {r['cpu_count']} CPUs", highlight=False)
    if o.get("installed"):
        out.print(f"onnxruntime {o['version']}: available "
                  f"{', '.join(o['providers_available'])}; using "
                  f"{', '.join(o['providers_selected'])}", highlight=False)
    else:
        out.print("onnxruntime: not installed", highlight=False)
    if t.get("installed"):
        devs = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in t["devices"])
        out.print(f"torch {t['version']} / torchvision {t['torchvision']}: CUDA "
                  f"{'yes: ' + devs if t['cuda_available'] else 'no'}; selected "
                  f"{t['selected']['device']} {t['selected']['precision']}, JPEG "
                  f"decode {t['selected']['jpeg_decode']}", highlight=False)
    else:
        out.print(f"torch: not installed ({t['hint']})", highlight=False)
    out.print(f"serving: {r['selected']['serving']}; batch jobs: "
              f"{r['selected']['batch_jobs']}", highlight=False)
    out.print("\n".join(variant_card_lines(r["nudenet_variants"])), highlight=False, soft_wrap=True)
    return Exit.OK
