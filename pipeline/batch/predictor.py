"""The batch predictor: load once in `__init__`, a batch of rows in and out in `__call__`.

The same class runs in the local engine's worker processes and as a Ray Data actor
(`map_batches`).  For each row it reads the bytes (local path or fsspec URL), passes them
through the safe-decode boundary (`pipeline.ingest`), stores the blobs (content-addressed, so
a repeat is free, and durable before any decision names them), and scores the decoded
images in one model call.  Policy and recording are not its business: a batch out is plain
columns (numpy arrays) that the recorder turns into decisions.

This module is what a worker process imports: it stays clear of the policy, the database
and the review store (their imports cost a worker seconds of start-up on two cores).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import Evidence, RGBImage, Scorer, ScoreResult
from models.errors import ModelError
from pipeline.batch.errors import (
    FILE_NOT_FOUND,
    FILE_UNAVAILABLE,
    FILE_UNREADABLE,
    MODEL_FAILED,
    PROCESSING_FAILED,
)
from pipeline.blobs import LocalBlobStore
from pipeline.errors import ErrorKind, ImageTooLarge, PipelineError
from pipeline.evidence import evidence_rows, shadow_rows
from pipeline.hashing.pdq import DihedralPdq
from pipeline.ingest import IngestedImage, ingest_bytes, with_pdq

__all__ = ["OUTPUT_COLUMNS", "Prediction", "Predictor", "PredictorSpec", "read_bytes",
           "read_with_retries", "rows_to_batch", "transient", "worker_init", "worker_predict"]

logger = logging.getLogger(__name__)

#: the columns `Predictor.__call__` returns, in order
OUTPUT_COLUMNS: tuple[str, ...] = (
    "ordinal", "sha256", "mime", "width", "height", "size_bytes", "model_version",
    "scores", "evidence", "shadow", "error_code", "error_detail", "pdq",
)


@dataclass(frozen=True, slots=True)
class PredictorSpec:
    """Everything a worker needs to build its predictor (picklable, so it crosses processes)."""

    #: a NudeNet variant (fp32, ov-bf16, int8-mixed) or a scorer name from models.registry
    model: str
    model_root: str
    threads: int = 1
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    #: where blobs go (content-addressed); None: the caller stores them itself
    blob_dir: str | None = None
    #: images per model call within a batch on CPU: the model's working memory grows with it
    #: and its speed does not (NudeNet 320n, measured from 1 to 32); on a GPU the whole batch
    model_batch: int = 8
    #: tries of a read that fails for now (network, a storage service's 5xx or throttling),
    #: the waits between them doubling from `read_backoff_s`
    read_attempts: int = 3
    read_backoff_s: float = 0.25


def load_model(spec: PredictorSpec) -> Scorer:
    from models import nudenet_fast
    from models.registry import load_scorer

    if spec.model in nudenet_fast.VARIANTS:
        return nudenet_fast.load_variant(spec.model, root=Path(spec.model_root),
                                         threads=spec.threads)
    if spec.model == "classifier":
        return load_scorer("classifier", root=Path(spec.model_root), threads=spec.threads)
    return load_scorer(spec.model, threads=spec.threads)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One row of a predictor's output, as the recorder reads it."""

    ordinal: int
    sha256: str | None
    mime: str | None
    width: int
    height: int
    size_bytes: int
    model_version: str | None
    scores: dict[str, float]
    evidence: list[dict[str, Any]]
    shadow: list[dict[str, Any]]
    error_code: str | None
    error_detail: str | None
    #: the eight dihedral PDQ hashes and quality of the decoded image (None: not decoded)
    pdq: DihedralPdq | None = None

    def result(self) -> ScoreResult:
        """The model's result for this row, as the scorer returned it in the worker."""
        assert self.model_version is not None
        return ScoreResult(
            model_version=self.model_version, scores=self.scores,
            evidence=tuple(Evidence(e["category"], e["label"], e["score"],
                                    tuple(e["box"]) if e["box"] else None)
                           for e in self.evidence))

    @classmethod
    def from_batch(cls, batch: Mapping[str, npt.NDArray[Any]]) -> list[Prediction]:
        n = len(batch["ordinal"])
        out: list[Prediction] = []
        for i in range(n):
            code = batch["error_code"][i]
            out.append(cls(
                ordinal=int(batch["ordinal"][i]),
                sha256=_opt(batch["sha256"][i]),
                mime=_opt(batch["mime"][i]),
                width=int(batch["width"][i]),
                height=int(batch["height"][i]),
                size_bytes=int(batch["size_bytes"][i]),
                model_version=_opt(batch["model_version"][i]),
                scores=json.loads(str(batch["scores"][i])),
                evidence=json.loads(str(batch["evidence"][i])),
                shadow=json.loads(str(batch["shadow"][i])),
                error_code=_opt(code),
                error_detail=_opt(batch["error_detail"][i]),
                pdq=pdq_from_text(_opt(batch["pdq"][i]) if "pdq" in batch else None),
            ))
        return out


def pdq_to_text(pdq: DihedralPdq | None) -> str | None:
    """A row's dihedral PDQ as one text column: "quality:hex,hex,..." (eight hashes)."""
    if pdq is None:
        return None
    return f"{pdq.quality}:" + ",".join(h.hex() for h in pdq.hashes)


def pdq_from_text(text: str | None) -> DihedralPdq | None:
    if not text:
        return None
    quality, hashes = text.split(":", 1)
    return DihedralPdq(tuple(bytes.fromhex(h) for h in hashes.split(",")), int(quality))


def _opt(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text or None


def rows_to_batch(ordinals: Sequence[int], locations: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
    """The input batch a predictor takes: row ordinals and what to open."""
    return {"ordinal": np.asarray(ordinals, dtype=np.int64),
            "location": np.asarray(list(locations), dtype=object)}


class Predictor:
    """Reads, decodes, stores and scores one batch of rows per call."""

    def __init__(self, spec: PredictorSpec) -> None:
        self.spec = spec
        self.scorer = load_model(spec)
        self.blobs = LocalBlobStore(Path(spec.blob_dir)) if spec.blob_dir else None

    @property
    def model_version(self) -> str:
        return self.scorer.version

    def _ingest(self, location: str) -> tuple[IngestedImage, bytes]:
        limit = self.spec.max_bytes
        data = read_with_retries(location, limit, attempts=self.spec.read_attempts,
                                 backoff_s=self.spec.read_backoff_s)
        if len(data) > limit:
            raise ImageTooLarge(f"the file is larger than {limit} bytes")
        image = with_pdq(ingest_bytes(data, max_bytes=limit, max_pixels=self.spec.max_pixels))
        return image, data

    def __call__(self, batch: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        ordinals = [int(x) for x in batch["ordinal"]]
        locations = [str(x) for x in batch["location"]]
        n = len(ordinals)
        cols: dict[str, list[Any]] = {name: [None] * n for name in OUTPUT_COLUMNS}
        cols["ordinal"] = ordinals
        for name in ("width", "height", "size_bytes"):
            cols[name] = [0] * n
        for name in ("scores", "evidence", "shadow"):
            cols[name] = ["{}" if name == "scores" else "[]"] * n
        images: list[RGBImage] = []
        where: list[int] = []
        blobs: list[bytes] = []
        for i, location in enumerate(locations):
            try:
                image, data = self._ingest(location)
            except _RowError as exc:
                cols["error_code"][i], cols["error_detail"][i] = exc.row_code, exc.detail
                continue
            except PipelineError as exc:
                cols["error_code"][i], cols["error_detail"][i] = exc.code, exc.detail
                continue
            except Exception as exc:  # one file must never stop the job: its row's error
                logger.exception("processing a file failed", extra={"ordinal": ordinals[i]})
                cols["error_code"][i] = PROCESSING_FAILED
                cols["error_detail"][i] = (f"processing this file failed ({type(exc).__name__}); "
                                           "the worker's log has the traceback")
                continue
            blobs.append(data)
            cols["sha256"][i], cols["mime"][i] = image.sha256, image.mime
            cols["width"][i], cols["height"][i] = image.width, image.height
            cols["size_bytes"][i] = image.size_bytes
            cols["pdq"][i] = pdq_to_text(image.pdq)
            images.append(image.pixels)
            where.append(i)
        if self.blobs is not None and blobs:
            self.blobs.put_many(blobs)  # durable before any record: no decision lacks its blob
        del blobs
        on_gpu = "CUDAExecutionProvider" in getattr(self.scorer, "providers", ())
        step = max(1, len(images) if on_gpu else self.spec.model_batch)
        results: list[ScoreResult | None] = []
        for k in range(0, len(images), step):
            results.extend(self._score(images[k : k + step]))
        del images
        if results:
            for i, result in zip(where, results, strict=True):
                if result is None:
                    cols["error_code"][i] = MODEL_FAILED
                    cols["error_detail"][i] = ("the model failed on this image; the worker's "
                                               "log has the traceback")
                    continue
                cols["model_version"][i] = result.model_version
                cols["scores"][i] = json.dumps(dict(result.scores))
                cols["evidence"][i] = json.dumps(evidence_rows(result))
                cols["shadow"][i] = json.dumps(shadow_rows(result))
        out: dict[str, npt.NDArray[Any]] = {}
        for name in OUTPUT_COLUMNS:
            if name in ("ordinal", "width", "height", "size_bytes"):
                out[name] = np.asarray(cols[name], dtype=np.int64)
            else:
                out[name] = np.asarray(["" if v is None else v for v in cols[name]], dtype=object)
        return out


    def _score(self, images: list[RGBImage]) -> list[ScoreResult | None]:
        """The model's results for one model batch; when the batch fails, each image alone,
        so that one image the model cannot take costs its own row (None), not its batch's or
        the job's.  When every image of a batch fails alone too, the model is what failed, not
        the images: the job stops (`ModelError`, resumable) rather than record them all."""
        try:
            return list(self.scorer.score(images))
        except Exception as exc:
            if len(images) == 1:
                logger.exception("the model failed on an image")
                return [None]
            logger.exception("the model failed on a batch; scoring its images one by one")
            failure = exc
        alone = [r for image in images for r in self._score([image])]
        if all(r is None for r in alone):
            raise ModelError(f"the model fails on every image of a batch "
                             f"({type(failure).__name__}: {failure})") from None
        return alone


class _RowError(PipelineError):
    """The file a row names could not be read; the row is recorded with this code."""

    code = FILE_UNREADABLE
    kind = ErrorKind.NOT_FOUND

    def __init__(self, row_code: str, detail: str) -> None:
        super().__init__(detail)
        #: the code the row is recorded with (file.not_found, file.unreadable)
        self.row_code = row_code


def transient(exc: BaseException, *, remote: bool) -> bool:
    """Whether a read failed for now (another try may succeed) rather than for good.

    For now: an HTTP status of 5xx, 408 or 429 (the file systems' errors carry it as
    `status`), the network (`ConnectionError`, timeouts), and, from a remote file system, any
    error of its library's own (aiohttp's, botocore's...), which is not taken as the row's
    fault: fsspec's HTTP file system reports every failure to reach a file as
    FileNotFoundError, so its cause decides.  For good: a missing file (404), another 4xx,
    permissions, a directory, and a local file's other operating-system errors."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if isinstance(exc, FileNotFoundError):
        cause = exc.__cause__
        return remote and cause is not None and transient(cause, remote=True)
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return remote


def read_with_retries(location: str, max_bytes: int, *, attempts: int = 3,
                      backoff_s: float = 0.25) -> bytes:
    """`read_bytes`, tried again after a transient failure; the row's error otherwise:
    file.not_found, file.unreadable (for good), file.unavailable (still failing for now after
    `attempts` tries: the job writes no row for it, and a resume tries it again)."""
    remote = "://" in location and not location.startswith("file://")
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return read_bytes(location, max_bytes)
        except Exception as exc:  # classified: the row's error, whichever it is
            if not transient(exc, remote=remote):
                if isinstance(exc, FileNotFoundError):
                    raise _RowError(FILE_NOT_FOUND, "the file does not exist") from None
                raise _RowError(FILE_UNREADABLE,
                                f"the file cannot be read ({type(exc).__name__})") from None
            if attempt >= attempts:
                cause = exc.__cause__ or exc
                raise _RowError(FILE_UNAVAILABLE,
                                f"the file could not be read after {attempts} tries "
                                f"({type(cause).__name__}); a resume tries it again") from None
            logger.info("read failed for now; trying again",
                        extra={"attempt": attempt, "error": type(exc).__name__})
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def read_bytes(location: str, max_bytes: int) -> bytes:
    """At most `max_bytes + 1` bytes of a local file or fsspec URL (one past the limit is
    enough to know it is too large)."""
    if "://" in location and not location.startswith("file://"):
        import fsspec

        with fsspec.open(location, "rb") as fh:
            data: bytes = fh.read(max_bytes + 1)
            return data
    path = location[len("file://"):] if location.startswith("file://") else location
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


# ---- a worker process of the local engine ----------------------------------------------------
_PREDICTOR: Predictor | None = None


def worker_init(spec: PredictorSpec) -> None:
    """A pool worker's initializer: load the model once (one thread: the processes are the
    parallelism); Ctrl-C is the main process's to handle, which shuts the pool down."""
    global _PREDICTOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PREDICTOR = Predictor(spec)


def worker_predict(batch: dict[str, Any]) -> dict[str, Any]:
    assert _PREDICTOR is not None, "worker not initialised"
    return _PREDICTOR(batch)
