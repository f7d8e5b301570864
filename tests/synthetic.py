"""A synthetic, benign-by-construction labelled dataset for the classifier tests and benchmarks.

Three categories are visual patterns drawn over a noisy, smoothly shaded background:
`synthetic.stripes` (a sinusoidal grating at a random angle and period), `synthetic.checker`
(a rotated checkerboard) and `synthetic.blobs` (a few large soft discs).  Each is present or
absent independently (multi-label, imbalanced), at a random place, size and contrast, so some
images are genuinely hard.  Uploads shared in a medical context more often carry small round
*spots*, which are not blobs: a distractor, so that the false-positive rate on medically
shared images (the evaluation's headline figure) means something.  Nothing here resembles a
person; the labels are what the generator drew.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image

from pipeline.policy import POLICIES_DIR, Policy, policy_from_text

CATEGORIES: tuple[str, ...] = ("synthetic.stripes", "synthetic.checker", "synthetic.blobs")
#: how often each pattern is present: imbalanced on purpose (pos_weight has work to do)
PREVALENCE: dict[str, float] = {
    "synthetic.stripes": 0.35,
    "synthetic.checker": 0.25,
    "synthetic.blobs": 0.20,
}
SPLITS: tuple[str, ...] = ("train", "val", "calib", "test")


@dataclass(frozen=True, slots=True)
class Drawn:
    image: npt.NDArray[np.uint8]
    labels: tuple[str, ...]
    medical_sharing: bool
    #: the distractor was drawn (small round spots: not blobs, but easy to take for them)
    spots: bool = False


def _background(rng: np.random.Generator, h: int, w: int) -> npt.NDArray[np.float32]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
    gx, gy = rng.uniform(-0.3, 0.3, size=(2, 3)).astype(np.float32)
    img = base + gx * (xx[..., None] / w - 0.5) + gy * (yy[..., None] / h - 0.5)
    return img.astype(np.float32)


def _contrasting(rng: np.random.Generator, img: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A colour well away from the image's mean colour, so a drawn pattern is visible."""
    mean = img.reshape(-1, 3).mean(axis=0)
    shift = rng.uniform(0.3, 0.55, size=3) * np.where(mean > 0.5, -1.0, 1.0)
    return np.clip(mean + shift, 0.0, 1.0).astype(np.float32)


def _region(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.float32], tuple[int, int, int, int]]:
    """A rectangle covering 60-100 % of each side, as an alpha mask."""
    rh, rw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y0, x0 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    mask = np.zeros((h, w), dtype=np.float32)
    mask[y0 : y0 + rh, x0 : x0 + rw] = 1.0
    return mask, (y0, x0, rh, rw)


def _rotated_coords(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    return u.astype(np.float32), v.astype(np.float32)


def _stripes(rng: np.random.Generator, h: int, w: int) -> npt.NDArray[np.float32]:
    u, _ = _rotated_coords(rng, h, w)
    period = rng.uniform(10.0, 18.0)
    return (0.5 + 0.5 * np.sin(2 * np.pi * u / period)).astype(np.float32)


def _checker(rng: np.random.Generator, h: int, w: int) -> npt.NDArray[np.float32]:
    u, v = _rotated_coords(rng, h, w)
    cell = rng.uniform(11.0, 18.0)
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)


def _discs(
    rng: np.random.Generator, h: int, w: int, *, count: tuple[int, int], radius: tuple[float, float]
) -> npt.NDArray[np.float32]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w), dtype=np.float32)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        r = rng.uniform(*radius) * min(h, w)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r)
        out = np.maximum(out, np.clip(4.0 - 4.0 * d2, 0.0, 1.0))
    return out


def draw(rng: np.random.Generator, *, height: int = 80, width: int = 96) -> Drawn:
    """One image, its labels and its context."""
    medical = bool(rng.random() < 0.3)
    img = _background(rng, height, width)
    labels: list[str] = []
    for category in CATEGORIES:
        if rng.random() >= PREVALENCE[category]:
            continue
        labels.append(category)
        if category == "synthetic.stripes":
            pattern = _stripes(rng, height, width)
            mask, _ = _region(rng, height, width)
        elif category == "synthetic.checker":
            pattern = _checker(rng, height, width)
            mask, _ = _region(rng, height, width)
        else:
            pattern = _discs(rng, height, width, count=(2, 4), radius=(0.14, 0.24))
            mask = np.ones((height, width), dtype=np.float32)
        colour = _contrasting(rng, img)
        # Contrast varies from faint to strong: the faint end is where a model is unsure.
        alpha = rng.uniform(0.5, 0.9) * mask * pattern
        img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    # The distractor: small spots, far more often on medically shared uploads.
    spotted = bool(rng.random() < (0.6 if medical else 0.1))
    if spotted:
        spots = _discs(rng, height, width, count=(4, 9), radius=(0.03, 0.06))
        colour = np.array([0.7, 0.2, 0.2], dtype=np.float32) + rng.normal(0, 0.05, 3).astype(
            np.float32
        )
        a = 0.7 * spots
        img = img * (1 - a[..., None]) + colour * a[..., None]
    img = img + rng.normal(0.0, 0.05, size=img.shape).astype(np.float32)
    pixels = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Drawn(pixels, tuple(labels), medical, spotted)


def write_dataset(
    root: Path,
    *,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    fmt: str = "jsonl",
    image_format: str = "png",
) -> Path:
    """Draw images into root/images and write root/manifest.{jsonl,csv}; returns its path."""
    counts = counts or {"train": 480, "val": 160, "calib": 160, "test": 200}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        for i in range(counts.get(split, 0)):
            d = draw(rng, height=int(rng.integers(72, 97)), width=int(rng.integers(80, 113)))
            name = f"images/{split}-{i:04d}.{image_format}"
            kwargs: dict[str, Any] = {"quality": 92} if image_format == "jpg" else {}
            Image.fromarray(d.image).save(root / name, **kwargs)
            rows.append(
                {
                    "path": name,
                    "labels": list(d.labels),
                    "split": split,
                    "context": {"medical_sharing": d.medical_sharing},
                }
            )
    if fmt == "jsonl":
        path = root / "manifest.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path = root / "manifest.csv"
        lines = ["path,labels,split,medical_sharing"]
        for r in rows:
            lines.append(
                f"{r['path']},{';'.join(r['labels'])},{r['split']},"
                f"{str(r['context']['medical_sharing']).lower()}"
            )
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def policy_text(categories: Sequence[str] = CATEGORIES) -> str:
    """The bundled default policy with its categories replaced by the synthetic ones."""
    raw = yaml.safe_load((POLICIES_DIR / "default.yaml").read_text(encoding="utf-8"))
    raw = copy.deepcopy(raw)
    raw["name"] = "synthetic-test"
    raw["version"] = "test.1"
    raw["categories"] = {
        c: {
            "severity": "medium",
            "description": "a synthetic pattern (tests only)",
            "thresholds": {"review": 0.5, "hold": 0.9},
            "qa_sample_rate": 0.0,
            "queue": "adult",
        }
        for c in categories
    }
    return yaml.safe_dump(raw, sort_keys=False)


def synthetic_policy() -> Policy:
    return policy_from_text(policy_text(), source="tests/synthetic.py")


def write_policy(path: Path) -> Path:
    path.write_text(policy_text(), encoding="utf-8")
    return path


def jpeg_corpus(count: int, *, size: tuple[int, int] = (768, 1024), seed: int = 0) -> list[bytes]:
    """Benign JPEGs at a realistic upload size (for benchmarks): synthetic drawings upscaled."""
    import io

    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for _ in range(count):
        d = draw(rng, height=size[0] // 4, width=size[1] // 4)
        img = Image.fromarray(d.image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        noise = rng.normal(0, 6, size=(size[0], size[1], 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def need_torch() -> None:
    """Skip without the torch extra on a laptop; in CI (which installs it) fail instead."""
    import importlib.util
    import os

    import pytest

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the torch extra: pip install -e '.[dev,torch]'")
        pytest.skip("the torch extra is not installed (pip install -e '.[torch]')")


def make_app() -> Any:
    """The `lookfirst` app itself, to run its model commands in-process."""
    from pipeline.cli import app

    return app


def invoke(app: Any, *args: str | Path) -> Any:
    """Run a command in-process; returns typer's Result (exit_code, stdout, output)."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
