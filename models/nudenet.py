"""The NudeNet 320n detector backend: its model card, its preprocessing and its scorer.

Owns a batched, vectorised reproduction of NudeNet 3.4.2's own pre- and post-processing (so
detections match `NudeDetector.detect`), the check that the weights are the ones the card
names, and the mapping from NudeNet's 18 labels to policy categories.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.base import Evidence, RGBImage, Scorer, ScoreResult
from models.errors import InvalidArgument, ModelDigestMismatch, ModelError, ModelFileMissing

logger = logging.getLogger(__name__)

#: The policy categories a card may map labels to; anything else is a typo in the card.
ALLOWED_CATEGORIES: tuple[str, ...] = (
    "nudity.explicit",
    "nudity.partial",
    "skin.exposed",
    "person.face",
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Digest characters kept in the model version: enough to tell weights apart in logs and rows.
_VERSION_DIGEST_CHARS = 12

FloatArray = npt.NDArray[np.float32]


def default_card_path() -> Path:
    """The card shipped with this package (models/cards/nudenet-320n.json), found next to this
    file: `importlib.resources` resolves the package by its name, and `models` is a common one
    (onnxruntime's transformers folder has a `models` directory it puts on sys.path)."""
    return Path(__file__).resolve().parent / "cards" / "nudenet-320n.json"


@dataclass(frozen=True, slots=True)
class NudeNetCard:
    """What the card says about the model; validated on load so a bad card fails loudly."""

    name: str
    package: str
    package_version: str
    weights_file: str
    sha256: str
    input_name: str
    input_size: int
    scale: float
    candidate_threshold: float
    keep_threshold: float
    nms_iou: float
    labels: tuple[str, ...]
    categories: tuple[str, ...]
    category_map: Mapping[str, str | None]

    @classmethod
    def load(cls, path: Path | None = None) -> NudeNetCard:
        path = path or default_card_path()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelFileMissing(f"model card not found: {path}") from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"model card {path} is unreadable: {exc}") from exc
        try:
            return cls.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card {path} is invalid: {exc}") from exc

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> NudeNetCard:
        """Build and validate; raises ValueError, KeyError or TypeError naming the bad field."""
        post = raw["postprocessing"]
        card = cls(
            name=str(raw["name"]),
            package=str(raw["source"]["package"]),
            package_version=str(raw["source"]["package_version"]),
            weights_file=str(raw["source"]["file"]),
            sha256=str(raw["weights"]["sha256"]).lower(),
            input_name=str(raw["input"]["name"]),
            input_size=int(raw["input"]["size"]),
            scale=float(raw["preprocessing"]["scale"]),
            candidate_threshold=float(post["candidate_threshold"]),
            keep_threshold=float(post["keep_threshold"]),
            nms_iou=float(post["nms_iou"]),
            labels=tuple(str(label) for label in raw["labels"]),
            categories=tuple(str(c) for c in raw["categories"]),
            category_map={
                str(k): (None if v is None else str(v)) for k, v in raw["category_map"].items()
            },
        )
        card._validate(raw)
        return card

    def _validate(self, raw: Mapping[str, Any]) -> None:
        if not _SHA256.match(self.sha256):
            raise ValueError("weights.sha256 must be 64 lowercase hex characters")
        if len(self.labels) != 18 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be 18 distinct names, got {len(self.labels)}")
        if set(self.category_map) != set(self.labels):
            extra = sorted(set(self.category_map) - set(self.labels))
            missing = sorted(set(self.labels) - set(self.category_map))
            raise ValueError(
                f"category_map keys differ from labels: extra={extra} missing={missing}"
            )
        mapped = {c for c in self.category_map.values() if c is not None}
        unknown = sorted(mapped - set(ALLOWED_CATEGORIES))
        if unknown:
            raise ValueError(f"category_map uses unknown categories {unknown}")
        if len(set(self.categories)) != len(self.categories) or set(self.categories) != mapped:
            raise ValueError("categories must list each mapped category exactly once")
        if not 0.0 < self.candidate_threshold <= self.keep_threshold < 1.0:
            raise ValueError("need 0 < candidate_threshold <= keep_threshold < 1")
        if not 0.0 < self.nms_iou < 1.0:
            raise ValueError("nms_iou must be in (0, 1)")
        if self.input_size <= 0 or not 0.0 < self.scale <= 1.0:
            raise ValueError("input.size and preprocessing.scale must be positive")
        if raw["preprocessing"]["color_order"] != "BGR":
            # The letterbox below only knows NudeNet's BGR order; refuse rather than mis-feed.
            raise ValueError("preprocessing.color_order must be BGR")


#: the largest square the letterbox pads to before resizing (4096^2 x 3 bytes = 48 MiB)
MAX_PAD_SIDE = 4096


@dataclass(frozen=True, slots=True)
class LetterboxMeta:
    """Per-image geometry a batch needs to map boxes back: original sizes and padded side."""

    heights: npt.NDArray[np.int64]
    widths: npt.NDArray[np.int64]
    sides: npt.NDArray[np.int64]


#: padded squares up to this side reuse one buffer per thread (12 MiB at most)
_SCRATCH_SIDE = 2048
_scratch = threading.local()


def _padded_square(image: RGBImage) -> RGBImage:
    """`image` padded bottom and right with zeros to a square: the same pixels as
    cv2.copyMakeBorder, written into a buffer this thread reuses.  A fresh 3 MiB array per
    image costs its page faults, about 2.5 ms of the 3 ms preprocessing took (measured)."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    if side > _SCRATCH_SIDE:
        return np.asarray(cv2.copyMakeBorder(image, 0, side - h, 0, side - w,
                                             cv2.BORDER_CONSTANT, value=0), dtype=np.uint8)
    buf: RGBImage | None = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[0] < side:
        buf = np.zeros((max(side, 1024), max(side, 1024), 3), dtype=np.uint8)
        _scratch.buf = buf
    square = buf[:side, :side]
    square[:h, :w] = image
    square[h:, :] = 0
    square[:h, w:] = 0
    return square


@dataclass(frozen=True, slots=True)
class Letterbox:
    """NudeNet's preprocessing as one object, shared by scoring, parity tests and benchmarks.

    Pads bottom/right with zeros to a square, resizes the square bilinearly to `size`, feeds
    BGR scaled by float32(scale).  Bit-identical to NudeNet's cv2.dnn.blobFromImage path.
    """

    size: int = 320
    scale: float = 1 / 255

    def __call__(self, images: Sequence[RGBImage]) -> tuple[FloatArray, LetterboxMeta]:
        n = len(images)
        resized = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        heights = np.empty(n, dtype=np.int64)
        widths = np.empty(n, dtype=np.int64)
        for i, image in enumerate(images):
            if not image.flags.c_contiguous:
                # cv2 rejects some strided views (flips, transposes); decoded images never copy.
                image = np.ascontiguousarray(image)
            h, w = image.shape[:2]
            side = max(h, w)
            if side > MAX_PAD_SIDE:
                # A 1 x 20000 strip would pad to a 20000^2 square (1.2 GB) before the resize.
                # Shrink first so the square stays small; the geometry (and so the box mapping
                # through `sides`) is unchanged, only the interpolation path differs from
                # NudeNet's on such extreme images.
                f = MAX_PAD_SIDE / side
                image = np.asarray(
                    cv2.resize(
                        image, (max(1, round(w * f)), max(1, round(h * f))),
                        interpolation=cv2.INTER_AREA,
                    ),
                    dtype=np.uint8,
                )
            square = _padded_square(image)
            # Bilinear resize is per channel, so resizing RGB and swapping to BGR afterwards
            # (for free, in the batched conversion below) gives NudeNet's exact pixels.
            cv2.resize(
                square, (self.size, self.size), dst=resized[i], interpolation=cv2.INTER_LINEAR
            )
            heights[i], widths[i] = h, w
        tensor = np.empty((n, 3, self.size, self.size), dtype=np.float32)
        scale = np.float32(self.scale)
        for channel, source in enumerate((2, 1, 0)):  # RGB in, BGR out
            # float32 multiply (not a division) is what blobFromImage does, to the last bit.
            np.multiply(resized[..., source], scale, out=tensor[:, channel], dtype=np.float32)
        return tensor, LetterboxMeta(heights, widths, np.maximum(heights, widths))


@dataclass(frozen=True, slots=True)
class Detection:
    """One kept NudeNet box, with both a clipped box and NudeNet's own box for parity."""

    label: str
    score: float
    #: (x1, y1, x2, y2) in original pixels, both corners clipped to the image.
    box: tuple[float, float, float, float]
    #: [x, y, w, h] exactly as NudeNet reports it.  NudeNet clips the corner but does not
    #: shrink w/h when the corner moved, so this box can overhang; use `box` for display.
    nudenet_box: tuple[int, int, int, int]

    def as_nudenet(self) -> dict[str, Any]:
        """The dict `NudeDetector.detect` would return for this box."""
        return {"class": self.label, "score": self.score, "box": list(self.nudenet_box)}


def _default_providers() -> list[str]:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _package_weights(card: NudeNetCard) -> Path:
    # find_spec locates the package without importing it (importing nudenet loads cv2 and
    # builds nothing, but there is no reason to run its code just to find a file).
    spec = importlib.util.find_spec(card.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissing(
            f"the {card.package} package is not installed; install it or pass weights="
        )
    try:
        installed = metadata.version(card.package)
    except metadata.PackageNotFoundError:
        installed = "unknown"
    if installed != card.package_version:
        # The digest check below is what guards correctness; the version is only a hint.
        logger.warning(
            "installed %s differs from the card",
            card.package,
            extra={"installed": installed, "card": card.package_version},
        )
    return Path(next(iter(spec.submodule_search_locations))) / card.weights_file


def _read_weights(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ModelFileMissing(f"model weights not found: {path}") from exc
    except OSError as exc:
        raise ModelError(f"model weights unreadable: {path}: {exc}") from exc


class NudeNetScorer(Scorer):
    """NudeNet 320n on onnxruntime: a batch of RGB images in, per-category scores out.

    Loads once; `score` runs one session call per batch.  `preprocess`, `run_model` and
    `postprocess` are public so benchmarks can time each stage.
    """

    name: str
    version: str
    categories: tuple[str, ...]

    def __init__(
        self,
        *,
        weights: Path | None = None,
        card: Path | None = None,
        threads: int = 0,
        providers: list[str] | None = None,
        verify_digest: bool = True,
        load_session: bool = True,
    ) -> None:
        if threads < 0:
            raise InvalidArgument("threads must be >= 0 (0 lets onnxruntime choose)")
        self.card = NudeNetCard.load(card)
        self.name = self.card.name
        self.categories = self.card.categories
        self.preprocessing = Letterbox(size=self.card.input_size, scale=self.card.scale)

        self.weights_path = Path(weights) if weights is not None else _package_weights(self.card)
        # Hash the very bytes handed to onnxruntime, so the file cannot change in between.
        blob = _read_weights(self.weights_path)
        self.digest = hashlib.sha256(blob).hexdigest()
        if self.digest != self.card.sha256:
            if verify_digest:
                raise ModelDigestMismatch(
                    f"weights {self.weights_path} have sha256 {self.digest}, but card "
                    f"{self.card.name} records {self.card.sha256}: refusing to score with "
                    "weights the card does not describe"
                )
            logger.warning(
                "loading weights whose digest differs from the card",
                extra={"model": self.card.name, "sha256": self.digest},
            )
        self.version = f"{self.card.name}@sha256:{self.digest[:_VERSION_DIGEST_CHARS]}"

        self.providers: tuple[str, ...] = ()
        self._session: ort.InferenceSession | None = None
        if load_session:
            self._load_session(blob, threads, providers)
        # else: pre- and post-processing only, around another runtime (models.nudenet_fast)

        self._labels = self.card.labels
        # Labels the policy ignores (mapped to null) are absent: they are not evidence.
        self._category_of: dict[str, str] = {
            label: category
            for label, category in self.card.category_map.items()
            if category is not None
        }
        logger.info(
            "model loaded",
            extra={"model_version": self.version, "providers": list(self.providers)},
        )

    def _load_session(self, blob: bytes, threads: int, providers: list[str] | None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One graph, run sequentially: parallelism comes from intra-op threads and from
        # running several scorers, not from inter-op scheduling.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                blob, sess_options=options, providers=providers or _default_providers()
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime could not load {self.weights_path}: {exc}") from exc
        self.providers = tuple(self._session.get_providers())
        self._input_name = self._session.get_inputs()[0].name
        if self._input_name != self.card.input_name:
            raise ModelError(
                f"model input is {self._input_name!r}, card says {self.card.input_name!r}"
            )

    # -- stages ---------------------------------------------------------------------------

    def preprocess(self, images: Sequence[RGBImage]) -> tuple[FloatArray, LetterboxMeta]:
        """RGB uint8 images -> one N x 3 x size x size float32 BGR tensor, plus geometry."""
        return self.preprocessing(images)

    def run_model(self, tensor: FloatArray) -> FloatArray:
        """One session call for the whole batch; returns N x (4 + labels) x anchors."""
        if self._session is None:
            raise ModelError("this scorer was built without a session (load_session=False)")
        outputs = self._session.run(None, {self._input_name: tensor})
        raw: FloatArray = np.asarray(outputs[0], dtype=np.float32)
        if (
            raw.ndim != 3
            or raw.shape[0] != tensor.shape[0]
            or raw.shape[1] != 4 + len(self._labels)
        ):
            raise ModelError(f"unexpected model output shape {raw.shape}")
        return raw

    def postprocess(self, raw: FloatArray, meta: LetterboxMeta) -> list[list[Detection]]:
        """Decode YOLOv8 rows, filter, NMS and map boxes back, exactly as NudeNet does."""
        n = raw.shape[0]
        class_scores = raw[:, 4:, :]  # N x labels x anchors
        best = class_scores.max(axis=1)  # N x anchors
        image_idx, anchor_idx = np.nonzero(best >= np.float32(self.card.candidate_threshold))
        label_idx = class_scores[image_idx, :, anchor_idx].argmax(axis=1)
        conf = best[image_idx, anchor_idx]
        cx, cy, bw, bh = (raw[image_idx, k, anchor_idx] for k in range(4))

        # NudeNet's arithmetic, kept in float32 and in its order, so NMS sees the same boxes.
        size = np.float32(self.preprocessing.size)
        side = meta.sides[image_idx].astype(np.float32)
        width = meta.widths[image_idx].astype(np.float32)
        height = meta.heights[image_idx].astype(np.float32)
        x1 = (cx - bw / np.float32(2)) * side / size
        y1 = (cy - bh / np.float32(2)) * side / size
        ws = bw * side / size
        hs = bh * side / size
        nx = np.clip(x1, np.float32(0), width)
        ny = np.clip(y1, np.float32(0), height)
        nw = np.minimum(ws, width - nx)
        nh = np.minimum(hs, height - ny)
        nn_boxes = np.stack([nx, ny, nw, nh], axis=1).astype(np.float64)
        # The evidence box clips both corners, which NudeNet's box does not.
        clipped = np.stack(
            [
                nx,
                ny,
                np.clip(x1 + ws, np.float32(0), width),
                np.clip(y1 + hs, np.float32(0), height),
            ],
            axis=1,
        )

        results: list[list[Detection]] = []
        bounds = np.searchsorted(image_idx, np.arange(n + 1))
        for i in range(n):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if lo == hi:
                results.append([])
                continue
            # Class-agnostic, like NudeNet (a box suppresses overlapping boxes of any label);
            # NMSBoxes keeps only scores strictly above keep_threshold.
            kept = cv2.dnn.NMSBoxes(
                nn_boxes[lo:hi].tolist(),
                conf[lo:hi].tolist(),
                self.card.keep_threshold,
                self.card.nms_iou,
            )
            keep = np.asarray(kept, dtype=np.int64).reshape(-1) + lo
            results.append(
                [
                    Detection(
                        label=self._labels[int(label_idx[k])],
                        score=float(conf[k]),
                        box=(
                            round(float(clipped[k, 0]), 2),
                            round(float(clipped[k, 1]), 2),
                            round(float(clipped[k, 2]), 2),
                            round(float(clipped[k, 3]), 2),
                        ),
                        nudenet_box=(
                            int(nn_boxes[k, 0]),
                            int(nn_boxes[k, 1]),
                            int(nn_boxes[k, 2]),
                            int(nn_boxes[k, 3]),
                        ),
                    )
                    for k in keep
                ]
            )
        return results

    def detect(self, images: Sequence[RGBImage]) -> list[list[Detection]]:
        """Every kept detection per image, mapped or not (parity tests, debugging)."""
        if not images:
            return []
        tensor, meta = self.preprocess(images)
        return self.postprocess(self.run_model(tensor), meta)

    # -- the Scorer seam ------------------------------------------------------------------

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        return self.results(self.detect(images), model_version=self.version)

    def results(self, detections: Sequence[Sequence[Detection]], *,
                model_version: str) -> list[ScoreResult]:
        """Each image's detections as scores (a category's best detection) and evidence; the
        faster variants (models.nudenet_fast) pass their own version."""
        results: list[ScoreResult] = []
        for found in detections:
            scores = dict.fromkeys(self.categories, 0.0)
            evidence: list[Evidence] = []
            for det in found:  # sorted by score, highest first, as NMS returned them
                category = self._category_of.get(det.label)
                if category is None:
                    continue
                scores[category] = max(scores[category], det.score)
                evidence.append(Evidence(category, det.label, det.score, det.box))
            results.append(
                ScoreResult(model_version=model_version, scores=scores, evidence=tuple(evidence))
            )
        return results
