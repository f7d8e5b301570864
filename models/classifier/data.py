"""Labelled datasets: the manifest format, its validation, decoding, and the data digest.

A manifest is JSONL or CSV; image paths are relative to the manifest's folder.

JSONL, one object per line::

    {"path": "img/0001.jpg", "labels": ["nudity.partial"], "split": "train",
     "context": {"medical_sharing": true}}

CSV, with a header: `path`, `labels` (names joined by `;`, empty for none), `split`, and any
other column is a context field (`true`/`false` become booleans, whole numbers integers).

A JSONL row may also carry `id`, `sha256` (the image's, 64 hex digits), `cluster` (the
near-duplicate group it was split with) and `provenance` (an object: where the label came
from): `lookfirst dataset export` writes them (pipeline/learning/dataset.py documents its
format); training reads past them.

`labels` lists the categories present; every other category is absent (a benign image has
`[]`).  `split` is one of train, val (early stopping), calib (temperature scaling; val is
used when there is none) and test (evaluation).  `context` fields slice the evaluation
(`medical_sharing=true` is the headline segment) and move the policy thresholds in force.
No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.base import RGBImage
from models.errors import DatasetError
from models.pixels import DECODE_ERRORS, to_rgb, upright

SPLITS: tuple[str, ...] = ("train", "val", "calib", "test")
#: what a JSONL row may hold; the last four are bookkeeping that training does not read
_JSONL_KEYS = frozenset({"path", "labels", "split", "context", "id", "sha256", "cluster",
                         "provenance"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
ContextValue = bool | int | str | None


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    labels: frozenset[str]
    split: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    #: where it came from, for error messages ("manifest.jsonl line 12")
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    samples: tuple[Sample, ...]

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"no such manifest: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".csv":
            samples = list(_parse_csv(path, text))
        elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            samples = list(_parse_jsonl(path, text))
        else:
            raise DatasetError(f"{path}: a manifest is .jsonl or .csv")
        if not samples:
            raise DatasetError(f"{path}: the manifest has no rows")
        return cls(path, tuple(samples))

    def split(self, name: str) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.split == name)

    def has_split(self, name: str) -> bool:
        return any(s.split == name for s in self.samples)

    def labels_used(self) -> set[str]:
        return {label for s in self.samples for label in s.labels}

    def images(self, splits: Sequence[str], limit: int) -> list[RGBImage]:
        """The first `limit` images of `splits` (in that order), decoded."""
        rows = [s for split in splits for s in self.split(split)][:limit]
        return [decode_image(s.path) for s in rows]

    def categories_to_learn(
        self, known: Sequence[str], *, requested: Sequence[str] = (), source: str
    ) -> tuple[str, ...]:
        """`requested` if each is known, else every known category this manifest labels.

        `known` is the policy's categories, in its order; `source` names it in messages
        ("policy default").  A label outside `known`, or no label at all, is refused.
        """
        if requested:
            unknown = [c for c in requested if c not in known]
            if unknown:
                raise DatasetError(f"categories {unknown} are not in {source}")
            return tuple(requested)
        used = self.labels_used()
        outside = sorted(used - set(known))
        if outside:
            raise DatasetError(f"manifest labels {outside} are not categories of {source} "
                               f"({', '.join(known)})")
        chosen = tuple(c for c in known if c in used)
        if not chosen:
            raise DatasetError(f"{self.path}: no row carries a label; nothing to learn")
        return chosen

    def check_categories(self, categories: Sequence[str], *, splits: Sequence[str]) -> None:
        """Refuse labels outside `categories`, and categories no split can learn or check."""
        unknown = sorted(self.labels_used() - set(categories))
        if unknown:
            raise DatasetError(
                f"{self.path}: labels {unknown} are not categories of this model "
                f"({', '.join(categories)})"
            )
        for split in splits:
            rows = self.split(split)
            if not rows:
                raise DatasetError(f"{self.path}: the {split!r} split is empty")
            for c in categories:
                pos = sum(c in s.labels for s in rows)
                if pos == 0 or pos == len(rows):
                    raise DatasetError(
                        f"{self.path}: category {c!r} has {pos} positives among "
                        f"{len(rows)} {split!r} images; it needs both positives and negatives"
                    )

    def digest(self) -> str:
        """sha256 over every row (path, labels, split, context) and each image's own sha256.

        Recorded in checkpoints and model cards: the same digest means the same training data,
        whatever the manifest's format or row order.
        """
        rows = []
        for s in self.samples:
            rows.append(
                json.dumps(
                    {
                        "image_sha256": file_sha256(s.path),
                        "labels": sorted(s.labels),
                        "split": s.split,
                        "context": {k: s.context[k] for k in sorted(s.context)},
                    },
                    sort_keys=True,
                )
            )
        h = hashlib.sha256()
        for row in sorted(rows):
            h.update(row.encode())
            h.update(b"\n")
        return h.hexdigest()


def label_matrix(samples: Sequence[Sample], categories: Sequence[str]) -> npt.NDArray[np.float32]:
    """N x C matrix of 0/1 targets in the model's category order."""
    out = np.zeros((len(samples), len(categories)), dtype=np.float32)
    for i, s in enumerate(samples):
        for j, c in enumerate(categories):
            out[i, j] = c in s.labels
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def decode_image(source: Path | bytes, *, reduce_to: int | None = None) -> RGBImage:
    """Decode a file or bytes to H x W x 3 uint8 RGB (read-only), exactly as an upload is
    decoded (`models.pixels`: EXIF orientation, transparency over white, 16-bit grey scaled),
    so that a model is trained and evaluated on the pixels it is served.

    `reduce_to`: let a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) as long as both
    sides stay at least this many pixels: several times faster when the model input is small.
    Off by default, because the scaled decode changes pixels a little.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if reduce_to is not None and img.format == "JPEG":
                img.draft("RGB", (reduce_to, reduce_to))
            img.load()
            shown = upright(img)
            rgb = to_rgb(shown)
    except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot decode {_where(source)}: {exc}") from None
    if rgb is None:
        raise DatasetError(f"cannot decode {_where(source)}: unsupported colour mode "
                           f"{shown.mode}")
    return rgb


def _where(source: Path | bytes) -> str:
    return "image bytes" if isinstance(source, bytes) else str(source)


# ---- parsing ------------------------------------------------------------------------------
def _sample(
    manifest: Path,
    where: str,
    raw_path: object,
    labels: object,
    split: object,
    context: object,
) -> Sample:
    if not isinstance(raw_path, str) or not raw_path:
        raise DatasetError(f"{where}: 'path' must be a non-empty string")
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise DatasetError(f"{where}: 'labels' must be a list of category names")
    if split not in SPLITS:
        raise DatasetError(f"{where}: 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(context, dict):
        raise DatasetError(f"{where}: 'context' must be an object")
    for k, v in context.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, bool | int | str)):
            raise DatasetError(f"{where}: context field {k!r} must be a boolean, number or text")
    image = (manifest.parent / raw_path).resolve()
    return Sample(image, frozenset(labels), str(split), dict(context), where)


def _parse_jsonl(path: Path, text: str) -> Iterable[Sample]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: each line must be a JSON object")
        extra = sorted(set(row) - _JSONL_KEYS)
        if extra:
            raise DatasetError(f"{where}: unknown keys {extra}")
        sha = row.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise DatasetError(f"{where}: 'sha256' must be 64 lowercase hexadecimal digits")
        if not isinstance(row.get("provenance", {}), dict):
            raise DatasetError(f"{where}: 'provenance' must be an object")
        yield _sample(
            path, where, row.get("path"), row.get("labels"), row.get("split"),
            row.get("context", {}),
        )


def _csv_value(text: str) -> ContextValue:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("", "null", "none"):
        return None
    try:
        return int(low)
    except ValueError:
        return text.strip()


def _parse_csv(path: Path, text: str) -> Iterable[Sample]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in ("path", "labels", "split") if c not in header]
    if missing:
        raise DatasetError(f"{path.name}: the CSV header lacks {missing}")
    for n, row in enumerate(reader, 2):
        where = f"{path.name} line {n}"
        labels_text = (row.get("labels") or "").strip()
        labels = [x.strip() for x in labels_text.split(";") if x.strip()]
        context: dict[str, Any] = {
            k: _csv_value(v or "")
            for k, v in row.items()
            if k not in ("path", "labels", "split", "id") and k is not None
        }
        yield _sample(path, where, row.get("path"), labels, row.get("split"), context)
