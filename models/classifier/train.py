"""Training: a manifest in, a calibrated checkpoint out, refused when it did not learn.

The default starts from EfficientNet-Lite0's ImageNet weights, installed with the torch extra.
Augmentation (random crop, horizontal flip, colour jitter) is drawn per sample from a
generator seeded by (seed, epoch, index), so a run is reproducible whatever the number of
loader workers.  Class imbalance is handled with `pos_weight` in the loss (the prior shift it
causes is undone before calibration).  The best epoch and early stopping follow the metric
users care about (mean validation ROC AUC by default, or average precision), not the loss: on
small data the validation loss can rise while the ranking still improves.  A run whose model
is not clearly better than chance on some category (ROC AUC below `min_auc` on validation, or
on the calibration split that played no part in choosing the epoch) is marked not registrable
and, by default, ends in ModelDidNotLearn.  The crop and the resize go through the model's own
`Preprocess`, so training sees the pixels serving sees.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.base import RGBImage
from models.classifier import calibrate
from models.classifier.arch import (
    DEFAULT_ARCH,
    ClassifierNet,
    build_net,
    get_architecture,
    load_initial_weights,
    pick_device,
    resolve_init,
    set_threads,
)
from models.classifier.checkpoint import FORMAT, FORMAT_VERSION, predict_logits, save_checkpoint
from models.classifier.data import Manifest, Sample, decode_image, label_matrix
from models.classifier.evaluate import average_precision, roc_auc
from models.classifier.preprocess import Preprocess
from models.classifier.progress import NoProgress, Progress
from models.errors import ModelDidNotLearn, TrainingConfigInvalid

logger = logging.getLogger(__name__)

#: pos_weight is clipped to this range: a category with 1 positive in 10,000 would otherwise
#: dominate the loss with a weight of 10,000
POS_WEIGHT_RANGE = (1.0 / 50.0, 50.0)
#: random crops keep at least this share of the image: moderation labels are about the whole
#: image, and a small crop can cut away exactly the part that earned the label
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: what picks the best epoch and stops training (higher is better for each)
SELECT_ON: tuple[str, ...] = ("roc_auc", "average_precision", "loss")
#: below this ROC AUC on any category a model is not clearly better than chance (0.5)
MIN_AUC = 0.6


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    categories: tuple[str, ...]
    #: a registered architecture; the default ships offline ImageNet weights
    arch: str = DEFAULT_ARCH
    #: input side in pixels; None: the architecture's default (224)
    size: int | None = None
    epochs: int = 30
    patience: int = 5
    min_delta: float = 1e-4
    batch_size: int = 32
    #: the learning rate of the new head (and of the whole network from scratch)
    lr: float = 1e-3
    #: the pretrained backbone's learning rate as a share of `lr`: features that already
    #: work are moved gently; None: 0.1 from pretrained weights, 1.0 from scratch
    backbone_lr_factor: float | None = None
    weight_decay: float = 1e-4
    seed: int = 0
    #: None: the architecture's default (its offline pretrained weights, or none); "none":
    #: from scratch; "pretrained"; "imagenet" (offline where shipped, else torchvision's
    #: cache, online only); or a local state_dict / checkpoint file
    init: str | None = None
    pos_weight: bool = True
    augment: bool = True
    #: BatchNorm running-statistics momentum while training.  torchvision's MobileNetV3 and
    #: EfficientNet use 0.01, tuned for ImageNet's million steps; on a few thousand steps
    #: their running statistics lag the weights and validation scores are noise.  None keeps
    #: the architecture's own value.
    bn_momentum: float | None = 0.1
    #: keep BatchNorm's running statistics (ImageNet's, from pretrained weights) fixed while
    #: training: on a few hundred images, batch statistics are noise the validation pays for.
    #: None: frozen when starting from pretrained weights or a file, updated from scratch
    freeze_bn: bool | None = None
    #: what picks the best epoch and stops early: mean validation "roc_auc" over the
    #: categories, mean "average_precision", or "loss" (the old behaviour)
    select_on: str = "roc_auc"
    #: the quality gate: every category's ROC AUC (validation, and the calibration split)
    #: must reach this, or the run is not registrable
    min_auc: float = MIN_AUC
    #: a run that fails the gate: "error" raises ModelDidNotLearn (files are still written,
    #: marked not registrable); "warn" returns the result, marked not registrable
    on_weak: str = "error"
    workers: int = 0
    threads: int = 0
    device: str | None = None
    #: model name recorded in the checkpoint (export uses it as the default name)
    name: str | None = None

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise TrainingConfigInvalid(f"select_on must be one of {', '.join(SELECT_ON)}")
        if self.on_weak not in ("error", "warn"):
            raise TrainingConfigInvalid("on_weak must be 'error' or 'warn'")
        if not 0.0 <= self.min_auc <= 1.0:
            raise TrainingConfigInvalid("min_auc must be within [0, 1]")
        if self.backbone_lr_factor is not None and self.backbone_lr_factor < 0:
            raise TrainingConfigInvalid("backbone_lr_factor must not be negative")


@dataclass
class TrainResult:
    model_path: Path
    best_path: Path
    last_path: Path
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val_auc: dict[str, float]
    calibration: calibrate.Calibration
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: the quality gate's verdict (see `quality_gate`); `registrable` is its "passed"
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def registrable(self) -> bool:
        return bool(self.quality.get("passed"))

    @property
    def seconds_per_epoch(self) -> float:
        return sum(float(r.get("seconds", 0.0)) for r in self.history) / max(1, len(self.history))

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model_path),
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "val_auc": self.val_auc,
            "registrable": self.registrable,
            "quality": self.quality,
            "calibration": self.calibration.to_dict(),
            "seconds": round(self.seconds, 1),
            "seconds_per_epoch": round(self.seconds_per_epoch, 2),
            "history": self.history,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ImageSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples -> (uint8 size x size x 3, float targets); augmented when `train`."""

    def __init__(
        self,
        samples: Sequence[Sample],
        categories: Sequence[str],
        preprocess: Preprocess,
        *,
        train: bool,
        seed: int,
        cache: bool = True,
    ) -> None:
        self.samples = tuple(samples)
        self.targets = torch.from_numpy(label_matrix(self.samples, categories))
        self.preprocess = preprocess
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        self._images: dict[int, RGBImage] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _source(self, i: int) -> RGBImage:
        if i in self._images:
            return self._images[i]
        image = decode_image(self.samples[i].path)
        if not self.train:
            image = self.preprocess.one(image)
        elif max(image.shape[:2]) > 4 * self.preprocess.size:
            # Cropping a 4x-size copy is indistinguishable after the final resize and keeps
            # a cached epoch in memory; the crop box is relative, so nothing else changes.
            f = 4 * self.preprocess.size / max(image.shape[:2])
            h, w = max(1, round(image.shape[0] * f)), max(1, round(image.shape[1] * f))
            image = np.asarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA),
                               dtype=np.uint8)
        if self.cache:
            self._images[i] = image
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._source(i)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            pixels = augment(image, self.preprocess, rng)
        else:
            pixels = image
        return torch.from_numpy(np.ascontiguousarray(pixels)), self.targets[i]


def augment(image: RGBImage, preprocess: Preprocess, rng: np.random.Generator) -> RGBImage:
    """Random resized crop, horizontal flip and colour jitter; resize by `preprocess`."""
    h, w = image.shape[:2]
    crop = image
    for _ in range(10):
        area = h * w * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = image[y0 : y0 + ch, x0 : x0 + cw]
            break
    out = preprocess.one(crop)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    x = out.astype(np.float32)
    x *= rng.uniform(0.8, 1.2)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean  # contrast
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * rng.uniform(0.8, 1.2) + grey  # saturation
    result: RGBImage = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    return result


def _loader(ds: ImageSet, cfg: TrainConfig, *, shuffle: bool, drop_last: bool) -> DataLoader[Any]:
    g = torch.Generator()
    g.manual_seed(cfg.seed)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=cfg.workers,
        generator=g,
        persistent_workers=False,
    )


def pos_weights(targets: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    pos = targets.sum(axis=0).astype(np.float64)
    neg = targets.shape[0] - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1.0), 1.0)
    return np.clip(w, *POS_WEIGHT_RANGE)


def _eval_logits(net: ClassifierNet, ds: ImageSet, cfg: TrainConfig, device: torch.device,
                 progress: Progress, key: str) -> npt.NDArray[np.float32]:
    loader = _loader(ds, cfg, shuffle=False, drop_last=False)
    progress.start(key, f"{key} (inference)", len(loader))

    def batches() -> Any:
        for x, _ in loader:
            yield x
            progress.advance(key)

    return predict_logits(net, batches(), device=device)


def selection_score(row: dict[str, Any], select_on: str) -> float:
    """An epoch's figure of merit, higher is better (NaN categories are left out)."""
    if select_on == "loss":
        return -float(row["val_loss"])
    values = [v for v in row[f"val_{'auc' if select_on == 'roc_auc' else 'ap'}"].values()
              if not math.isnan(v)]
    return float(np.mean(values)) if values else -math.inf


def quality_gate(
    val_auc: dict[str, float], calib_auc: dict[str, float] | None, *, min_auc: float
) -> dict[str, Any]:
    """Which categories are not clearly better than chance; `passed` when none.

    The validation figure is flattered by having chosen the epoch; the calibration split (when
    there is one) played no part in that choice, so a category must clear the bar on both.
    """
    failing: dict[str, dict[str, float]] = {}
    for c, auc in val_auc.items():
        seen = {"val": auc, **({"calib": calib_auc[c]} if calib_auc is not None else {})}
        low = {k: v for k, v in seen.items() if math.isnan(v) or v < min_auc}
        if low:
            failing[c] = low
    return {
        "metric": "roc_auc",
        "min_auc": min_auc,
        "val_auc": dict(val_auc),
        "calib_auc": dict(calib_auc) if calib_auc is not None else None,
        "failing": failing,
        "passed": not failing,
    }


def _param_groups(net: ClassifierNet, head: str, lr: float, factor: float) -> list[dict[str, Any]]:
    """The new head at `lr`, the rest at `lr * factor` (weight decay on both)."""
    head_params: list[nn.Parameter] = []
    body_params: list[nn.Parameter] = []
    for name, p in net.backbone.named_parameters():
        (head_params if name.startswith(head + ".") else body_params).append(p)
    groups = [{"params": head_params, "lr": lr, "name": "head"}]
    if body_params:
        groups.append({"params": body_params, "lr": lr * factor, "name": "backbone"})
    return groups


def _set_train_mode(net: ClassifierNet, *, freeze_bn: bool) -> None:
    net.train()
    if freeze_bn:
        # eval() on BatchNorm only: it normalises with its stored statistics and stops
        # updating them; its scale and shift still learn.
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train(
    manifest: Manifest,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> TrainResult:
    """Fit, select, calibrate, judge; writes best.pt, last.pt, model.pt and training.json.

    Raises ModelDidNotLearn (after writing the files, marked not registrable) when the model
    fails the quality gate and `cfg.on_weak` is "error".
    """
    progress = progress or NoProgress()
    started = time.monotonic()
    spec = get_architecture(cfg.arch)
    init = resolve_init(cfg.arch, cfg.init)
    calib_split = "calib" if manifest.has_split("calib") else "val"
    manifest.check_categories(cfg.categories, splits=("train", "val", calib_split))
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    preprocess = spec.preprocess(cfg.size)
    categories = cfg.categories

    net = build_net(cfg.arch, categories, preprocess)
    if cfg.bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.bn_momentum
    init_info = load_initial_weights(net, cfg.arch, init) if init else None
    freeze_bn = cfg.freeze_bn if cfg.freeze_bn is not None else init is not None
    factor = (cfg.backbone_lr_factor if cfg.backbone_lr_factor is not None
              else (0.1 if init is not None else 1.0))
    net = net.to(device).to(memory_format=torch.channels_last)

    train_ds = ImageSet(manifest.split("train"), categories, preprocess, train=cfg.augment,
                        seed=cfg.seed)
    val_ds = ImageSet(manifest.split("val"), categories, preprocess, train=False, seed=cfg.seed)
    y_train = train_ds.targets.numpy()
    y_val = val_ds.targets.numpy()
    pw = pos_weights(y_train) if cfg.pos_weight else np.ones(len(categories))
    prior_bias = -np.log(pw)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw, dtype=torch.float32, device=device))
    groups = _param_groups(net, spec.head, cfg.lr, factor)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_loader = _loader(train_ds, cfg, shuffle=True,
                           drop_last=len(train_ds) > cfg.batch_size)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(steps_per_epoch, total_steps // 10 + 1)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    data_digest = manifest.digest()
    resolved = {**{k: v for k, v in asdict(cfg).items() if k != "categories"},
                "init": init, "freeze_bn": freeze_bn, "backbone_lr_factor": factor}
    base: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": cfg.name or f"classifier-{cfg.arch}",
        "arch": cfg.arch,
        "categories": list(categories),
        "preprocessing": preprocess.to_dict(),
        "prior_bias": [float(x) for x in prior_bias],
        "pos_weight": [float(x) for x in pw],
        "train_config": resolved,
        "init": init_info,
        "data": {
            "manifest": str(manifest.path),
            "digest": data_digest,
            "counts": {s: len(manifest.split(s)) for s in ("train", "val", "calib", "test")},
            "positives": {
                c: int(y_train[:, j].sum()) for j, c in enumerate(categories)
            },
        },
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    stopped_early = False
    start = f"from {init_info['source']}" if init_info else "from scratch"
    progress.note(
        f"training {cfg.arch} ({start}) at {preprocess.size}px on {len(train_ds)} images "
        f"({', '.join(categories)}) on {device}; best epoch by validation {cfg.select_on}"
    )
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        epoch_started = time.monotonic()
        _set_train_mode(net, freeze_bn=freeze_bn)
        train_ds.epoch = epoch
        progress.start("train", f"epoch {epoch}/{cfg.epochs}", steps_per_epoch)
        running, seen = 0.0, 0
        for x, y in train_loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(y)
            seen += len(y)
            progress.advance("train")
        logits = _eval_logits(net, val_ds, cfg, device, progress, "validate")
        corrected = logits + prior_bias
        val_loss = calibrate.bce(corrected, y_val)
        aucs = {c: roc_auc(y_val[:, j], logits[:, j]) for j, c in enumerate(categories)}
        aps = {c: average_precision(y_val[:, j], logits[:, j]) for j, c in enumerate(categories)}
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": running / max(1, seen),
            "val_loss": val_loss,
            "val_auc": aucs,
            "val_ap": aps,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.monotonic() - epoch_started, 2),
        }
        score = selection_score(row, cfg.select_on)
        row["score"] = score
        history.append(row)
        improved = score > best_score + cfg.min_delta
        if improved:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            save_checkpoint(best_path, {**base, "model": best_state, "epoch": epoch,
                                        "history": history, "best": row})
        save_checkpoint(last_path, {
            **base, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
        })
        progress.note(
            f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
            f"val AUC " + ", ".join(f"{c} {a:.3f}" for c, a in aucs.items())
            + f" ({row['seconds']:.0f} s)" + (" (best)" if improved else "")
        )
        logger.info("epoch done", extra={"epoch": epoch, "val_loss": val_loss,
                                         "score": score})
        if epoch - best_epoch >= cfg.patience:
            stopped_early = True
            progress.note(f"early stop: no validation {cfg.select_on} improvement for "
                          f"{cfg.patience} epochs")
            break

    if best_state is None:  # every epoch scored NaN/-inf: keep the last one, judged below
        best_epoch = epoch
        best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    calib_ds = (
        val_ds if calib_split == "val"
        else ImageSet(manifest.split("calib"), categories, preprocess, train=False, seed=cfg.seed)
    )
    calib_logits = _eval_logits(net, calib_ds, cfg, device, progress, "calibrate")
    calib_y = calib_ds.targets.numpy()
    cal = calibrate.fit(calib_logits, calib_y, categories, bias=[float(b) for b in prior_bias],
                        split=calib_split)
    best_row = history[best_epoch - 1]
    calib_auc = (None if calib_split == "val" else
                 {c: roc_auc(calib_y[:, j], calib_logits[:, j]) for j, c in enumerate(categories)})
    quality = quality_gate(best_row["val_auc"], calib_auc, min_auc=cfg.min_auc)
    model_path = out_dir / "model.pt"
    save_checkpoint(model_path, {
        **base,
        "model": best_state,
        "epoch": best_epoch,
        "history": history,
        "best": best_row,
        "calibration": cal.to_dict(),
        "registrable": quality["passed"],
        "metrics": {"val_auc": best_row["val_auc"], "val_ap": best_row["val_ap"],
                    "val_loss": best_row["val_loss"], "selected_on": cfg.select_on,
                    "quality": quality,
                    "calibration_ece": {"split": calib_split, "before": dict(cal.ece_before),
                                        "after": dict(cal.ece_after)}},
    })
    result = TrainResult(
        model_path=model_path,
        best_path=best_path,
        last_path=last_path,
        best_epoch=best_epoch,
        epochs_run=epoch,
        stopped_early=stopped_early,
        val_auc=dict(best_row["val_auc"]),
        calibration=cal,
        history=history,
        seconds=time.monotonic() - started,
        quality=quality,
    )
    (out_dir / "training.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    progress.note(
        f"best epoch {best_epoch}; calibrated on {calib_split}: temperatures "
        + ", ".join(f"{c} {t:.2f}" for c, t in zip(categories, cal.temperature, strict=True))
    )
    if not quality["passed"]:
        detail = (
            f"the model is not clearly better than chance (ROC AUC < {cfg.min_auc:g}) on "
            + "; ".join(f"{c}: " + ", ".join(f"{k} {v:.3f}" for k, v in low.items())
                        for c, low in quality["failing"].items())
            + f". {model_path} is kept for diagnosis, marked not registrable. Check the labels "
            "(shuffled or inconsistent?), the number of positives per category, and the images"
        )
        logger.warning("model did not learn", extra={"failing": sorted(quality["failing"])})
        if cfg.on_weak == "error":
            raise ModelDidNotLearn(detail, result=result)
        progress.note(f"WARNING: {detail}")
    return result
