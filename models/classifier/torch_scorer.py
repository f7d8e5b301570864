"""The torch backend, for batch jobs on a GPU (and for evaluating a checkpoint before export).

Inference under `torch.inference_mode()`, weights in channels_last, autocast to fp16 or bf16
on CUDA (the calibration and sigmoid stay float32).  `score` takes decoded images like every
scorer; `score_encoded` takes JPEG bytes and, where CUDA exists, decodes the whole batch on
the device with `torchvision.io.decode_jpeg(device="cuda")` and resizes there (OpenCV's area
filter, as matrix products), so the CPU only reads files.  Decoders differ by a few levels on
some pixels, so scores differ from the CPU path by a little (measured in the tests); use
`score` for exact parity.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torchvision
from torch.nn import functional as F

from models.base import RGBImage, Scorer, ScoreResult
from models.classifier.card import model_version
from models.classifier.checkpoint import load_checkpoint
from models.classifier.data import decode_image
from models.classifier.onnx_scorer import probs_to_results
from models.errors import InvalidArgument

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_JPEG_MAGIC = b"\xff\xd8\xff"
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise InvalidArgument(f"precision must be one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" or precision == "fp32":
        return None  # CPU: onnxruntime is the fast path; fp32 keeps the torch path exact
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@functools.lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """n_out x n_in weights of OpenCV's INTER_AREA downscale along one axis.

    Output pixel o averages the source interval [o * s, (o + 1) * s), s = n_in / n_out, each
    source pixel weighted by the fraction of it that lies inside (as computeResizeAreaTab).
    """
    scale = n_in / n_out
    lo = np.arange(n_out, dtype=np.float64)[:, None] * scale
    hi = lo + scale
    left = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, left + 1) - np.maximum(lo, left), 0.0, None)
    return torch.from_numpy((overlap / scale).astype(np.float32)).to(device)


def area_resize(chw: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 3 x H x W -> uint8 3 x size x size, on the tensor's device.

    Downscaling (the usual case) reproduces `Preprocess`'s OpenCV INTER_AREA up to rounding,
    as two matrix products; an axis that must grow uses bilinear interpolation instead, close
    to (not identical with) OpenCV's INTER_AREA enlargement.
    """
    _, h, w = chw.shape
    x = chw.float()
    if h >= size and w >= size:
        dev = str(chw.device)
        x = _area_matrix(h, size, dev) @ x @ _area_matrix(w, size, dev).T
    else:
        x = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear",
                          align_corners=False)[0]
    return x.round_().clamp_(0, 255).to(torch.uint8)


class TorchClassifierScorer(Scorer):
    """A checkpoint on torch: CUDA with autocast when present, CPU otherwise."""

    name: str
    version: str
    categories: tuple[str, ...]

    def __init__(
        self,
        *,
        checkpoint: Path | str,
        device: str | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        threads: int = 0,
        evidence_min: float = 0.05,
    ) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.loaded = load_checkpoint(Path(checkpoint))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.autocast_dtype = _autocast_dtype(self.device, precision)
        self.precision = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype \
            else "fp32"
        self.name = self.loaded.name
        self.version = model_version(self.name, self.loaded.sha256)
        self.categories = self.loaded.categories
        self.preprocessing = self.loaded.preprocess
        self.evidence_min = evidence_min
        net = self.loaded.scoring_net().to(self.device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.eval()
        logger.info("model loaded", extra={"model_version": self.version,
                                           "device": str(self.device),
                                           "precision": self.precision})

    # -- stages ---------------------------------------------------------------------------

    def run_model(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        """uint8 N x S x S x 3 (any device) -> calibrated probabilities on the CPU."""
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            if self.autocast_dtype is not None:
                with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                    logits = self.net.net(x)
            else:
                logits = self.net.net(x)
            probs = self.net.calibrate(logits)
            out: npt.NDArray[np.float32] = probs.float().cpu().numpy()
            return out

    def results(self, probs: npt.NDArray[np.float32]) -> list[ScoreResult]:
        return probs_to_results(probs, self.categories, self.version, self.evidence_min)

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        batch = torch.from_numpy(self.preprocessing(images))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return self.results(self.run_model(batch))

    # -- encoded input (batch jobs) -------------------------------------------------------

    def decode_batch(self, blobs: Sequence[bytes], *, on_device: bool | None = None
                     ) -> torch.Tensor:
        """Encoded images -> uint8 N x S x S x 3 on the scoring device.

        `on_device` (default: when the device is CUDA): JPEGs are decoded together by
        torchvision on the device (nvJPEG on CUDA) and resized there by `area_resize`;
        anything else (PNG, WebP, a JPEG the decoder refuses) is
        decoded by Pillow and uploaded.  Otherwise: Pillow and the model's own `Preprocess`,
        exactly as `score` does.
        """
        size = self.preprocessing.size
        if on_device is None:
            on_device = self.device.type == "cuda"
        if not on_device:
            return torch.from_numpy(self.preprocessing([decode_image(b) for b in blobs]))
        out = torch.empty((len(blobs), size, size, 3), dtype=torch.uint8, device=self.device)
        jpeg_idx = [i for i, b in enumerate(blobs) if b[:3] == _JPEG_MAGIC]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg_idx:
            datas = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg_idx]
            try:
                with warnings.catch_warnings():
                    # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec;
                    # they still work, and decode_jpeg on CUDA is what this path is for.
                    warnings.filterwarnings("ignore", _TV_DEPRECATION, DeprecationWarning)
                    chw = torchvision.io.decode_jpeg(
                        datas, mode=torchvision.io.ImageReadMode.RGB, device=self.device,
                        apply_exif_orientation=True,
                    )
                decoded.update(zip(jpeg_idx, chw, strict=True))
            except RuntimeError:
                logger.warning("device JPEG decode failed for a batch; decoding with Pillow")
        for i, blob in enumerate(blobs):
            if i not in decoded:
                hwc = torch.from_numpy(decode_image(blob).copy())  # Pillow arrays are read-only
                decoded[i] = hwc.permute(2, 0, 1).to(self.device, non_blocking=True)
        for i in range(len(blobs)):
            out[i] = area_resize(decoded[i], size).permute(1, 2, 0)
        return out

    def score_encoded(self, blobs: Sequence[bytes], *, on_device: bool | None = None
                      ) -> list[ScoreResult]:
        """Score encoded images (bytes); see `decode_batch` for where decoding happens."""
        if not blobs:
            return []
        return self.results(self.run_model(self.decode_batch(blobs, on_device=on_device)))
