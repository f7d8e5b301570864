"""The serving backend for exported classifiers: onnxruntime, CPU or CUDA.

Loads once: reads the card, hashes the very bytes handed to onnxruntime and refuses them if
they differ from the card's sha256, then builds one session (graph optimisation on, intra-op
threads as asked, sequential execution).  `score` runs one session call per batch; the
outputs are already calibrated probabilities (the calibration is part of the graph).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.base import Evidence, RGBImage, Scorer, ScoreResult
from models.classifier.card import ClassifierCard, locate, model_version
from models.errors import InvalidArgument, ModelDigestMismatch, ModelError, ModelFileMissing

logger = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a GPU, CPU always as fallback."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def read_verified(path: Path, expected_sha256: str, *, what: str, verify: bool = True) -> bytes:
    """The file's bytes, refused (ModelDigestMismatch) when their sha256 is not `expected`."""
    try:
        blob = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ModelFileMissing(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelError(f"model file unreadable: {path}: {exc}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != expected_sha256:
        if verify:
            raise ModelDigestMismatch(
                f"{path} has sha256 {digest}, but the card of {what} records "
                f"{expected_sha256}: the file is corrupt or was replaced; refusing to load it"
            )
        logger.warning("loading a model whose digest differs from its card",
                       extra={"model": what, "sha256": digest})
    return blob


class OnnxClassifierScorer(Scorer):
    """An exported classifier on onnxruntime: RGB images in, calibrated scores out."""

    name: str
    version: str
    categories: tuple[str, ...]

    def __init__(
        self,
        *,
        model: Path | str,
        threads: int = 0,
        providers: Sequence[str] | None = None,
        graph_optimization: str = "all",
        verify_digest: bool = True,
        evidence_min: float = 0.05,
    ) -> None:
        """`model`: the model directory (model.onnx + card.json), its ONNX file or its card.

        `threads`: onnxruntime intra-op threads (0 lets it choose: one per physical core).
        `evidence_min`: categories scoring at least this are listed as evidence.
        """
        if threads < 0:
            raise InvalidArgument("threads must be >= 0 (0 lets onnxruntime choose)")
        if graph_optimization not in _OPT_LEVELS:
            raise InvalidArgument(f"graph_optimization must be one of {', '.join(_OPT_LEVELS)}")
        self.model_path, self.card = locate(Path(model))
        card: ClassifierCard = self.card
        self.name = card.name
        self.categories = card.categories
        self.preprocessing = card.preprocess
        self.evidence_min = evidence_min
        blob = read_verified(self.model_path, card.onnx.sha256, what=card.name,
                             verify=verify_digest)
        self.digest = hashlib.sha256(blob).hexdigest()
        self.version = model_version(card.name, self.digest)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One graph, run sequentially: parallelism comes from intra-op threads and from
        # running several scorers, not from inter-op scheduling.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _OPT_LEVELS[graph_optimization]
        try:
            self._session = ort.InferenceSession(
                blob, sess_options=options, providers=list(providers or default_providers())
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime could not load {self.model_path}: {exc}") from exc
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        inp = self._session.get_inputs()[0]
        out = self._session.get_outputs()[0]
        size = card.preprocess.size
        if inp.name != card.onnx.input_name or out.name != card.onnx.output_name:
            raise ModelError(
                f"model {inp.name!r} -> {out.name!r} differs from the card's "
                f"{card.onnx.input_name!r} -> {card.onnx.output_name!r}"
            )
        if inp.type != "tensor(uint8)" or list(inp.shape[1:]) != [size, size, 3]:
            raise ModelError(f"model input {inp.type} {inp.shape} is not N x {size} x {size} x 3 "
                             "uint8 as the card says")
        if out.shape[-1] != len(self.categories):
            raise ModelError(f"model has {out.shape[-1]} outputs for {len(self.categories)} "
                             "categories")
        self._input_name, self._output_name = inp.name, out.name
        self._max_batch = max(1, card.onnx.max_batch)
        logger.info("model loaded",
                    extra={"model_version": self.version, "providers": list(self.providers)})

    def preprocess(self, images: Sequence[RGBImage]) -> npt.NDArray[np.uint8]:
        return self.preprocessing(images)

    def run_model(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Calibrated probabilities, N x categories; chunks past the exported batch limit."""
        parts = []
        for lo in range(0, batch.shape[0], self._max_batch):
            (probs,) = self._session.run(
                [self._output_name], {self._input_name: batch[lo : lo + self._max_batch]}
            )
            parts.append(np.asarray(probs, dtype=np.float32))
        return np.concatenate(parts, axis=0)

    def results(self, probs: npt.NDArray[np.float32]) -> list[ScoreResult]:
        return probs_to_results(probs, self.categories, self.version, self.evidence_min)

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        return self.results(self.run_model(self.preprocess(images)))


def probs_to_results(
    probs: npt.NDArray[np.float32], categories: Sequence[str], version: str, evidence_min: float
) -> list[ScoreResult]:
    """Calibrated probabilities (one row per image) to results; both serving backends use it."""
    out = []
    for row in probs:
        scores = {c: float(row[j]) for j, c in enumerate(categories)}
        evidence = tuple(
            Evidence(category=c, label=c, score=s)
            for c, s in sorted(scores.items(), key=lambda kv: -kv[1])
            if s >= evidence_min
        )
        out.append(ScoreResult(model_version=version, scores=scores, evidence=evidence))
    return out
