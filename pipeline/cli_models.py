"""CLI commands for the trainable classifier: train, evaluate, export, quantize, the model
registry (`models list|register|activate|shadow|deactivate`) and `doctor`.

Registered onto the main app by `register(app)`.  torch is imported only by the commands
that need it, so the rest of the CLI starts fast and works without the torch extra.  The
policy supplies the categories a model is trained for and the thresholds it is judged at.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.progress import Progress as RichBar

    from models.base import RGBImage, Scorer
    from models.classifier.data import ContextValue, Manifest
    from pipeline.policy import Policy

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy file (default: LOOKFIRST_POLICY_PATH, or bundled)."),
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="Model registry directory (default: DATA_DIR/models)."),
]
_ZERO_SHA = "0" * 64


# ---- helpers ------------------------------------------------------------------------------------
class _RichProgress:
    """models.classifier.progress.Progress drawn with rich bars on stderr."""

    def __init__(self, bar: RichBar) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def start(self, key: str, description: str, total: int | None) -> None:
        if key in self.tasks:
            self.bar.reset(self.tasks[key], total=total, description=description, visible=True)
        else:
            self.tasks[key] = self.bar.add_task(description, total=total)

    def advance(self, key: str, steps: int = 1) -> None:
        if key in self.tasks:
            self.bar.advance(self.tasks[key], steps)

    def note(self, message: str) -> None:
        self.bar.console.print(message, highlight=False)


def _bar(as_json: bool) -> RichBar:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from pipeline.cli import err

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=as_json)


def _run(body: Callable[[], int], as_json: bool) -> None:
    """guarded(), plus: a model error caused by the user's input exits 2, not 3."""
    from models.errors import ModelError
    from pipeline.cli import Exit, _fail, guarded

    def wrapped() -> int:
        try:
            return body()
        except ModelError as exc:
            if getattr(exc, "user_error", False):
                _fail(exc.code, exc.detail, Exit.USER_ERROR, as_json)
            raise
        except ImportError as exc:
            _fail("model.dependency_missing",
                  f"{exc.name or exc}: install the torch extra (pip install '.[torch]')",
                  Exit.DEPENDENCY, as_json)
        except ValueError as exc:
            _fail("input.invalid", str(exc), Exit.USER_ERROR, as_json)

    raise typer.Exit(guarded(wrapped, as_json=as_json))


def _policy(path: Path | None) -> Policy:
    from pipeline.cli import settings
    from pipeline.policy import load_policy

    return load_policy(path or settings().policy_path)


def _registry_root(path: Path | None) -> Path:
    from pipeline.cli import settings

    return path or settings().data_dir / "models"


def _emit(obj: Any, as_json: bool) -> None:
    from pipeline.cli import emit

    emit(obj, as_json)


def thresholds_in_force(policy: Policy) -> Callable[[Mapping[str, ContextValue]], dict[str, float]]:
    """Context fields of a manifest row -> the review threshold in force per category.

    Asks the policy itself (so modifiers move thresholds exactly as in production); fields
    the policy does not know (a segment name, an id) are left out of the Context.
    """
    from pipeline.policy import Context

    known = set(Context.model_fields)

    def lookup(raw: Mapping[str, ContextValue]) -> dict[str, float]:
        ctx = Context.parse({k: v for k, v in raw.items() if k in known and v is not None})
        decision = policy.evaluate({}, ctx, content_sha256=_ZERO_SHA)
        return {r["category"]: float(r["threshold"]) for r in decision.reasons["rules"]
                if r["rule"] == f"{r['category']}.review"}

    return lookup


def policy_outcome(policy: Policy) -> Callable[[Mapping[str, float]], Hashable]:
    """Scores -> the policy's outcomes under a few representative contexts (for parity)."""
    from pipeline.policy import Context

    contexts = [Context(), Context(medical_sharing=True), Context(audience="public")]

    def outcome(scores: Mapping[str, float]) -> Hashable:
        clean = {k: min(1.0, max(0.0, float(v))) for k, v in scores.items()}
        return tuple(policy.evaluate(clean, c, content_sha256=_ZERO_SHA).outcome
                     for c in contexts)

    return outcome


def _images_from(manifest: Manifest, splits: Sequence[str], limit: int) -> list[RGBImage]:
    from models.classifier.data import decode_image

    rows = [s for split in splits for s in manifest.split(split)][:limit]
    return [decode_image(s.path) for s in rows]


def _probe_images(n: int, seed: int = 0) -> list[RGBImage]:
    """Varied synthetic images for a parity check when no dataset is given."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(48, 400)), int(rng.integers(48, 400))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3) * (xx[..., None] / w if i % 2 else yy[..., None] / h)
        img = base + rng.normal(0, 30 + 10 * (i % 4), (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def load_any_scorer(model: str, *, registry: Path, threads: int = 0) -> Scorer:
    """A checkpoint (.pt), an exported model (directory, .onnx or card), or NAME@VERSION."""
    from models.errors import ModelFileMissing

    path = Path(model)
    if path.suffix == ".pt":
        from models.classifier.torch_scorer import TorchClassifierScorer

        if not path.is_file():
            raise ModelFileMissing(f"checkpoint not found: {path}")
        return TorchClassifierScorer(checkpoint=path, threads=threads)
    if path.exists():
        from models.classifier.onnx_scorer import OnnxClassifierScorer

        return OnnxClassifierScorer(model=path, threads=threads)
    from models.classifier.registry import ModelRegistry

    return ModelRegistry(registry).load(model, threads=threads)


# ---- commands -----------------------------------------------------------------------------------
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="Labelled manifest (.jsonl or .csv).")],
    arch: Annotated[str, typer.Option("--arch", help="mobilenet_v3_large, mobilenet_v3_small, "
                                      "efficientnet_b0, resnet18, resnet50, convnext_tiny.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (checkpoints, model.pt).")],
    init: Annotated[str | None, typer.Option(
        "--init", help="Initial weights: a local state_dict/checkpoint file, or 'imagenet' "
        "(torchvision's cache; needs the network).")] = None,
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
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a multi-label classifier on a labelled manifest, calibrated on held-out data.

    Writes OUT/model.pt (the calibrated best epoch), best.pt, last.pt and training.json.
    """

    def body() -> int:
        from models.classifier.arch import get_architecture
        from models.classifier.data import Manifest
        from models.classifier.train import TrainConfig, train
        from models.errors import DatasetError

        get_architecture(arch)
        pol = _policy(policy)
        manifest = Manifest.load(data)
        if category:
            unknown = [c for c in category if c not in pol.categories]
            if unknown:
                raise DatasetError(f"categories {unknown} are not in policy {pol.name}")
            cats = tuple(category)
        else:
            used = manifest.labels_used()
            outside = sorted(used - set(pol.categories))
            if outside:
                raise DatasetError(f"manifest labels {outside} are not categories of policy "
                                   f"{pol.name} ({', '.join(pol.categories)})")
            cats = tuple(c for c in pol.categories if c in used)
            if not cats:
                raise DatasetError(f"{data}: no row carries a label; nothing to learn")
        cfg = TrainConfig(
            arch=arch, categories=cats, size=size, epochs=epochs, patience=patience,
            batch_size=batch_size, lr=lr, seed=seed, init=init, pos_weight=not no_pos_weight,
            augment=not no_augment, workers=workers, threads=threads, name=name,
        )
        with _bar(as_json) as bar:
            result = train(manifest, cfg, out, progress=_RichProgress(bar))
        d = result.as_dict()
        d.pop("history")
        if as_json:
            _emit(d, True)
        else:
            from pipeline.cli import out as console

            console.print(f"[green]trained[/green] {result.model_path} (best epoch "
                          f"{result.best_epoch} of {result.epochs_run})", highlight=False)
            for c, auc in result.val_auc.items():
                j = result.calibration.categories.index(c)
                console.print(
                    f"  {c}: val ROC AUC {auc:.3f}, temperature "
                    f"{result.calibration.temperature[j]:.2f}, ECE "
                    f"{result.calibration.ece_before[c]:.3f} → "
                    f"{result.calibration.ece_after[c]:.3f}", highlight=False)
        return 0

    _run(body, as_json)


def evaluate_cmd(
    model: Annotated[str, typer.Option("--model", help="model.pt, an exported model "
                                       "directory, or NAME@VERSION from the registry.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled manifest.")],
    out: Annotated[Path | None, typer.Option("--out", help="Report directory (default: "
                                             "DATA_DIR/evaluations/MODEL-SPLIT).")] = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    threads: Annotated[int, typer.Option(min=0)] = 0,
    policy: PolicyOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a model per category and per context segment at the policy's thresholds.

    Precision, recall, F1 and FPR at the review thresholds in force, PR and ROC curves,
    calibration error; writes a Markdown or HTML report with PNG plots, and JSON.
    """

    def body() -> int:
        from models.classifier.data import SPLITS, Manifest
        from models.classifier.evaluate import evaluate, score_samples, write_report
        from models.errors import DatasetError

        if fmt not in ("md", "html"):
            raise DatasetError("--format must be md or html")
        if split not in SPLITS:
            raise DatasetError(f"--split must be one of {', '.join(SPLITS)}")
        pol = _policy(policy)
        manifest = Manifest.load(data)
        samples = manifest.split(split)
        if not samples:
            raise DatasetError(f"{data}: the {split!r} split is empty")
        scorer = load_any_scorer(model, registry=_registry_root(registry), threads=threads)
        cats = [c for c in scorer.categories if c in pol.categories]
        if not cats:
            raise DatasetError(f"the model's categories {list(scorer.categories)} are not in "
                               f"policy {pol.name}")
        with _bar(as_json) as bar:
            scored = score_samples(scorer, samples, categories=cats,
                                   thresholds=thresholds_in_force(pol), batch_size=batch_size,
                                   split=split, progress=_RichProgress(bar))
        result = evaluate(scored)
        if out is None:
            from pipeline.cli import settings

            tag = scorer.version.replace("@sha256:", "-")
            target = settings().data_dir / "evaluations" / f"{tag}-{split}"
        else:
            target = out
        report = write_report(result, scored, target, fmt=fmt, notes={
            "model": model, "data": str(data), "policy": f"{pol.name} {pol.version}",
            "data_digest": manifest.digest(),
        })
        summary = {
            "model_version": result["model_version"], "split": split, "n": result["n"],
            "report": str(report.report_path), "json": str(report.json_path),
            "macro_roc_auc": result["macro"]["roc_auc"], "macro_ece": result["macro"]["ece"],
            "headline": result["headline"],
            "per_category": {c: {k: m[k] for k in ("precision", "recall", "f1", "fpr",
                                                    "roc_auc", "ece")}
                             for c, m in result["per_category"].items()},
        }
        if as_json:
            _emit(summary, True)
        else:
            from rich.table import Table

            from pipeline.cli import out as console

            t = Table("category", "precision", "recall", "F1", "FPR", "ROC AUC", "ECE")
            for c, m in summary["per_category"].items():
                t.add_row(c, *(("–" if m[k] is None else f"{m[k]:.3f}")
                               for k in ("precision", "recall", "f1", "fpr", "roc_auc", "ece")))
            console.print(t)
            for h in result["headline"]:
                fpr = "–" if h["image_fpr"] is None else f"{h['image_fpr']:.3f}"
                console.print(f"  benign flagged, {h['segment']}: {h['benign_flagged']}/"
                              f"{h['benign']} (FPR {fpr})", highlight=False)
            console.print(f"report: {report.report_path}", highlight=False)
        return 0

    _run(body, as_json)


def export_cmd(
    model: Annotated[Path, typer.Option("--model", help="The trained model.pt.")],
    out: Annotated[Path, typer.Option("--out", help="New directory for model.onnx + card.json.")],
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
    registry: RegistryOpt = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a checkpoint to one self-contained ONNX file with its model card.

    The batch dimension is dynamic; a parity check (onnxruntime vs torch: largest score
    difference and identical policy outcomes) must pass before anything is written.
    """

    def body() -> int:
        from models.classifier.checkpoint import load_checkpoint
        from models.classifier.data import Manifest
        from models.classifier.export import export

        pol = _policy(policy)
        loaded = load_checkpoint(model)
        images = (_images_from(Manifest.load(data), ("test", "calib", "val"), parity_images)
                  if data else _probe_images(min(parity_images, 16)))
        metrics: dict[str, Any] = {}
        if evaluation is not None:
            ev = json.loads(evaluation.read_text(encoding="utf-8"))
            metrics["evaluation"] = {
                "model_version": ev.get("model_version"), "split": ev.get("split"),
                "n": ev.get("n"), "macro": ev.get("macro"), "headline": ev.get("headline"),
                "per_category": {c: {k: v for k, v in m.items() if k != "curves"}
                                 for c, m in ev.get("per_category", {}).items()},
            }
        result = export(loaded, out, parity_images=images, outcome=policy_outcome(pol),
                        name=name, tolerance=tolerance, metrics=metrics,
                        notes=f"parity outcomes under policy {pol.name} {pol.version}")
        d: dict[str, Any] = {
            "model_version": result.card.version, "onnx": str(result.onnx_path),
            "card": str(result.card_path), "sha256": result.card.onnx.sha256,
            "parity": result.parity.as_dict(),
        }
        if register_as:
            from models.classifier.registry import ModelRegistry

            entry = ModelRegistry(_registry_root(registry)).register(out, version=register_as)
            d["registered"] = entry.as_dict()
        if as_json:
            _emit(d, True)
        else:
            from pipeline.cli import out as console

            p = result.parity
            console.print(f"[green]exported[/green] {result.card.version} → {result.onnx_path}\n"
                          f"  parity on {p.n} images: max abs diff {p.max_abs_diff:.2e}, "
                          f"outcomes identical: {p.outcomes_identical}", highlight=False)
            if register_as:
                console.print(f"  registered as {d['registered']['ref']} (inactive)",
                              highlight=False)
        return 0

    _run(body, as_json)


def quantize_cmd(
    model: Annotated[Path, typer.Option("--model", help="An exported model directory.")],
    data: Annotated[Path, typer.Option("--data", help="Manifest: calibration images from "
                                       "train/val, agreement measured on test.")],
    out: Annotated[Path, typer.Option("--out", help="New directory for the int8 model.")],
    calibration_images: Annotated[int, typer.Option(min=1)] = 128,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quantise an exported model to int8 and measure its agreement with fp32."""

    def body() -> int:
        from models.classifier.data import Manifest
        from models.classifier.quantize import quantize_classifier

        pol = _policy(policy)
        manifest = Manifest.load(data)
        calib = _images_from(manifest, ("train", "val"), calibration_images)
        held_out = _images_from(manifest, ("test",), 10_000)
        review = {c: s.thresholds.review for c, s in pol.categories.items()}
        card, agree = quantize_classifier(model, out, calibration_images=calib,
                                          eval_images=held_out, outcome=policy_outcome(pol),
                                          thresholds=review)
        d = {"model_version": card.version, "directory": str(out),
             "agreement_vs_fp32": agree.as_dict()}
        _emit(d, as_json)
        return 0

    _run(body, as_json)


def doctor_cmd(as_json: JsonOpt = False) -> None:
    """Which devices and execution providers the model backends find and use."""

    def body() -> int:
        from models.doctor import report

        r = report()
        if as_json:
            _emit(r, True)
            return 0
        from pipeline.cli import out as console

        o, t = r["onnxruntime"], r["torch"]
        console.print(f"python {r['python']} on {r['platform']}, {r['cpu_count']} CPUs",
                      highlight=False)
        if o.get("installed"):
            console.print(f"onnxruntime {o['version']}: available "
                          f"{', '.join(o['providers_available'])}; using "
                          f"{', '.join(o['providers_selected'])}", highlight=False)
        else:
            console.print("onnxruntime: not installed", highlight=False)
        if t.get("installed"):
            devs = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in t["devices"])
            console.print(f"torch {t['version']} / torchvision {t['torchvision']}: CUDA "
                          f"{'yes: ' + devs if t['cuda_available'] else 'no'}; selected "
                          f"{t['selected']['device']} {t['selected']['precision']}, JPEG "
                          f"decode {t['selected']['jpeg_decode']}", highlight=False)
        else:
            console.print(f"torch: not installed ({t['hint']})", highlight=False)
        console.print(f"serving: {r['selected']['serving']}; batch jobs: "
                      f"{r['selected']['batch_jobs']}", highlight=False)
        return 0

    _run(body, as_json)


# ---- the registry -------------------------------------------------------------------------------
models_app = typer.Typer(no_args_is_help=True, help="The model registry: active and shadow "
                                                    "models.")


@models_app.command("list")
def models_list(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Registered models, their status and version."""

    def body() -> int:
        from models.classifier.registry import ModelRegistry

        entries = ModelRegistry(_registry_root(registry)).entries()
        if as_json:
            _emit([e.as_dict() for e in entries], True)
            return 0
        from rich.table import Table

        from pipeline.cli import out as console

        t = Table("model", "status", "model version", "arch", "categories", "registered")
        for e in entries:
            colour = {"active": "green", "shadow": "yellow"}.get(e.status, "dim")
            t.add_row(e.ref, f"[{colour}]{e.status}[/{colour}]", e.model_version, e.arch,
                      ", ".join(e.categories), e.registered_at)
        console.print(t)
        return 0

    _run(body, as_json)


@models_app.command("register")
def models_register(
    model: Annotated[Path, typer.Argument(help="An exported model directory.")],
    version: Annotated[str | None, typer.Option(help="Version label (default: sha256 "
                                                "prefix).")] = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an exported model (inactive until activated or shadowed)."""

    def body() -> int:
        from models.classifier.registry import ModelRegistry

        entry = ModelRegistry(_registry_root(registry)).register(model, version=version)
        _emit(entry.as_dict() if as_json else f"registered {entry.ref} ({entry.model_version})",
              as_json)
        return 0

    _run(body, as_json)


def _status_command(status: str, doc: str) -> Callable[..., None]:
    def command(
        ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME with one version).")],
        registry: RegistryOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        def body() -> int:
            from models.classifier.registry import ModelRegistry

            reg = ModelRegistry(_registry_root(registry))
            entry = reg.set_status(ref, status)  # type: ignore[arg-type]
            _emit(entry.as_dict() if as_json else f"{entry.ref} is now {entry.status}", as_json)
            return 0

        _run(body, as_json)

    command.__doc__ = doc
    return command


models_app.command("activate")(_status_command(
    "active", "Make a model the one whose scores decide outcomes (the previous one shadows)."))
models_app.command("shadow")(_status_command(
    "shadow", "Score live traffic with a model for comparison, without affecting outcomes."))
models_app.command("deactivate")(_status_command(
    "inactive", "Stop scoring with a model (it stays registered)."))


def register(app: typer.Typer) -> None:
    """Add the model commands to `app`."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("export")(export_cmd)
    app.command("quantize")(quantize_cmd)
    app.command("doctor")(doctor_cmd)
    app.add_typer(models_app, name="models")
