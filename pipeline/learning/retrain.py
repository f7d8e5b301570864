"""`lookfirst retrain`: verdicts to a shadow model in one command.

export (the audited dataset of what people decided) → train (the default configuration:
EfficientNet-Lite0 from its offline ImageNet weights; the quality gate applies, and a model
that did not learn stops here, registered nowhere) → calibrate (part of training) → evaluate
(on the dataset's test split, when it has one) → export to ONNX (with the parity check and the
evaluation in its card) → register as a `shadow`, which scores live traffic without deciding
anything until `models compare` and `models promote`.

Everything lands under one directory: dataset/ (unless an exported dataset is given), run/,
evaluation/, model/.  torch is needed (the torch extra).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.classifier.progress import NoProgress, Progress
from models.classifier.registry import Entry, ModelRegistry
from models.errors import InvalidArgument
from pipeline.learning.dataset import INFO, MANIFEST, ExportResult, export_dataset
from pipeline.runtime import Runtime


@dataclass(frozen=True, kw_only=True)
class RetrainOptions:
    """What `lookfirst train` would be told; None keeps the trainer's default."""

    arch: str | None = None
    init: str | None = None
    size: int | None = None
    epochs: int = 30
    patience: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    threads: int = 0
    workers: int = 0
    name: str | None = None
    select_on: str = "roc_auc"
    min_auc: float = 0.6


@dataclass
class RetrainResult:
    directory: Path
    dataset: ExportResult | ExportedDataset
    train: dict[str, Any]
    evaluation: dict[str, Any] | None
    exported: dict[str, Any]
    registered: Entry
    stages_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "dataset": self.dataset.as_dict(),
                "train": self.train, "evaluation": self.evaluation, "export": self.exported,
                "registered": self.registered.as_dict(), "seconds": self.stages_s}


@dataclass(frozen=True)
class ExportedDataset:
    """A dataset `dataset export` wrote before, as its dataset.json describes it."""

    directory: Path
    manifest: Path
    manifest_sha256: str
    rows: int
    splits: dict[str, int]
    labels: dict[str, int]

    @classmethod
    def read(cls, path: Path) -> ExportedDataset:
        """`path`: the export's directory (or its manifest.jsonl); the manifest must be the
        one the export wrote (its sha256 is checked)."""
        import hashlib
        import json

        from models.errors import DatasetError

        directory = path.parent if path.is_file() else path
        try:
            info = json.loads((directory / INFO).read_text(encoding="utf-8"))
            manifest = directory / MANIFEST
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{directory} is not a dataset `lookfirst dataset export` "
                               f"wrote: {exc}") from None
        if digest != info.get("manifest_sha256"):
            raise DatasetError(f"{manifest} is not the manifest that was exported (its sha256 "
                               "differs from dataset.json's)")
        return cls(directory, manifest, digest, int(info["rows"]), dict(info["splits"]),
                   dict(info["labels"]))

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "manifest": str(self.manifest),
                "manifest_sha256": self.manifest_sha256, "rows": self.rows,
                "splits": self.splits, "labels": self.labels, "exported_before": True}


def default_version(now: dt.datetime) -> str:
    """A version label from the time of the run: r20261206.013005."""
    return now.astimezone(dt.UTC).strftime("r%Y%m%d.%H%M%S")


def retrain(
    rt: Runtime,
    out_dir: Path,
    *,
    registry: ModelRegistry,
    since: dt.datetime | None = None,
    dataset: Path | None = None,
    version: str | None = None,
    options: RetrainOptions | None = None,
    progress: Progress | None = None,
) -> RetrainResult:
    """Export (unless `dataset` names an export already made), train, evaluate, export the
    model and register it as a shadow."""
    import time

    from models.classifier import torch_extra
    from models.classifier.data import Manifest
    from models.classifier.evaluate import evaluate, read_summary, score_samples, write_report
    from pipeline.policy_tools import policy_outcome, thresholds_in_force

    with torch_extra():
        from models.classifier.arch import DEFAULT_ARCH
        from models.classifier.checkpoint import load_checkpoint
        from models.classifier.export import export
        from models.classifier.torch_scorer import TorchClassifierScorer
        from models.classifier.train import TrainConfig, train

    opts = options or RetrainOptions()
    progress = progress or NoProgress()
    policy = rt.policy
    version = version or default_version(rt.review.clock())
    stages: dict[str, float] = {}
    t0 = time.monotonic()

    data: ExportResult | ExportedDataset
    if dataset is not None:
        if since is not None:
            raise InvalidArgument("--since chooses what to export; an exported dataset "
                                  "already has its window")
        data = ExportedDataset.read(dataset)
    else:
        data = export_dataset(rt, out_dir / "dataset", since=since)
    stages["export_dataset"] = round(time.monotonic() - t0, 1)
    progress.note(f"dataset: {data.rows} rows {data.splits}, labels {data.labels}")
    manifest = Manifest.load(data.manifest)
    cats = manifest.categories_to_learn(tuple(policy.categories),
                                        source=f"policy {policy.name}")
    cfg = TrainConfig(
        categories=cats, arch=opts.arch or DEFAULT_ARCH, init=opts.init, size=opts.size,
        epochs=opts.epochs, patience=opts.patience, batch_size=opts.batch_size, lr=opts.lr,
        seed=opts.seed, threads=opts.threads, workers=opts.workers, name=opts.name,
        select_on=opts.select_on, min_auc=opts.min_auc, on_weak="error",
    )
    t = time.monotonic()
    trained = train(manifest, cfg, out_dir / "run", progress=progress)  # gate: may raise
    stages["train"] = round(time.monotonic() - t, 1)

    evaluation_summary: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    test = manifest.split("test")
    if test:
        t = time.monotonic()
        scorer = TorchClassifierScorer(checkpoint=trained.model_path, threads=opts.threads)
        scored = score_samples(scorer, test, categories=cats,
                               thresholds=thresholds_in_force(policy), split="test",
                               progress=progress)
        result = evaluate(scored)
        report = write_report(result, scored, out_dir / "evaluation", notes={
            "policy": f"{policy.name} {policy.version}", "data_digest": manifest.digest(),
            "dataset_manifest_sha256": data.manifest_sha256})
        metrics["evaluation"] = read_summary(report.json_path)
        evaluation_summary = {"report": str(report.report_path), "n": result["n"],
                              "macro_roc_auc": result["macro"]["roc_auc"],
                              "headline": result["headline"]}
        stages["evaluate"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    loaded = load_checkpoint(trained.model_path)
    exported = export(loaded, out_dir / "model",
                      parity_images=manifest.images(("test", "calib", "val"), 64),
                      outcome=policy_outcome(policy), metrics=metrics,
                      notes=f"retrained on dataset {data.manifest_sha256[:12]}; parity "
                            f"outcomes under policy {policy.name} {policy.version}")
    stages["export_model"] = round(time.monotonic() - t, 1)
    entry = registry.register(exported.directory, version=version, status="shadow")
    train_summary = trained.as_dict()
    train_summary.pop("history")
    return RetrainResult(
        directory=out_dir, dataset=data, train=train_summary,
        evaluation=evaluation_summary,
        exported={"model_version": exported.card.version, "onnx": str(exported.onnx_path),
                  "parity": exported.parity.as_dict()},
        registered=entry, stages_s=stages,
    )
