"""One prepared check for a machine with an NVIDIA GPU: `python -m bench.gpu_check`.

1. What is there: torch's CUDA device, onnxruntime's CUDA execution provider (the
   `onnxruntime-gpu` wheel), nvJPEG through `torchvision.io.decode_jpeg(device="cuda")`.
2. Parity: NudeNet 320n on the CUDA execution provider against the CPU on the same decoded
   images (identical category sets required on >= 97.5 % and every score within 0.05).
3. The decode ceiling: batched JPEG decoding on the GPU, images/s.
4. End to end on the GPU: batched device decode, letterbox on the device, the CUDA session,
   NudeNet's post-processing; images/s and its ratio to the decode ceiling, and the category
   sets against the CPU path (device decoders differ from libjpeg by a few levels).

Exit codes: 0 checked, 1 parity below the bar, 3 no usable GPU (said in one line, first).
Images are benign (the sample photos transformed).  Figures are printed, never asserted
elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = 3
PARITY_FAILED = 1


def probe() -> dict[str, Any]:
    """What this machine offers; never raises."""
    found: dict[str, Any] = {}
    try:
        import onnxruntime as ort

        found["onnxruntime"] = ort.__version__
        found["cuda_ep"] = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        found["onnxruntime"] = None
        found["cuda_ep"] = False
    try:
        import torch

        found["torch"] = torch.__version__
        found["cuda"] = bool(torch.cuda.is_available())
        if found["cuda"]:
            found["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        found["torch"] = None
        found["cuda"] = False
    return found


def letterbox_gpu(images: list[Any], size: int) -> tuple[Any, list[tuple[int, int]]]:
    """NudeNet's letterbox on the device: pad bottom/right to a square, bilinear resize, BGR,
    scaled to [0, 1].  Bilinear on the GPU is not cv2's fixed-point filter: close, not equal."""
    import torch
    from torch.nn import functional as F

    out = []
    sizes = []
    for img in images:  # C x H x W uint8 RGB on the device
        _, h, w = img.shape
        side = max(h, w)
        square = F.pad(img, (0, side - w, 0, side - h))
        resized = F.interpolate(square[None].float(), size=(size, size), mode="bilinear",
                                align_corners=False, antialias=False)
        out.append(resized[0].round().clamp(0, 255))
        sizes.append((h, w))
    batch = torch.stack(out)[:, [2, 1, 0]] / 255.0
    return batch.contiguous(), sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="JPEGs for the throughput runs")
    ap.add_argument("--parity", type=int, default=128, help="images for the parity checks")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    found = probe()
    if not (found.get("cuda") and found.get("cuda_ep")):
        missing = []
        if not found.get("cuda"):
            missing.append("no CUDA device visible to torch")
        if not found.get("cuda_ep"):
            missing.append("onnxruntime has no CUDAExecutionProvider (pip install "
                           "onnxruntime-gpu in place of onnxruntime)")
        print(f"gpu_check: no usable GPU: {'; '.join(missing)}", file=sys.stderr)
        print(json.dumps({"error": {"code": "gpu.unavailable", "probe": found}}))
        return NO_GPU

    import numpy as np
    import torch
    import torchvision

    from models.calibration import as_jpeg, base_photos, derived_images
    from models.nudenet import LetterboxMeta, NudeNetScorer
    from models.nudenet_fast import category_set
    from pipeline.ingest import ingest_bytes

    print(f"device: {found['device']}; torch {found['torch']}; onnxruntime "
          f"{found['onnxruntime']}; torchvision {torchvision.__version__}")
    images = derived_images(base_photos([ROOT / "samples"]), args.n, seed=7)
    jpegs = [as_jpeg(im, quality=90) for im in images]
    del images
    decoded = [ingest_bytes(j, max_bytes=1 << 26, max_pixels=1 << 28).pixels
               for j in jpegs[: args.parity]]

    cpu = NudeNetScorer(threads=max(1, os.cpu_count() or 1), providers=["CPUExecutionProvider"])
    gpu = NudeNetScorer(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in gpu.providers:
        print("gpu_check: the CUDA execution provider failed to load", file=sys.stderr)
        return NO_GPU

    def score_all(scorer: NudeNetScorer, imgs: list[Any]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(imgs), args.batch):
            out.extend(scorer.score(imgs[i : i + args.batch]))
        return out

    ref = score_all(cpu, decoded)
    on_gpu = score_all(gpu, decoded)
    same = np.mean([category_set(a) == category_set(b) for a, b in zip(ref, on_gpu, strict=True)])
    diff = max(abs(a.scores[c] - b.scores[c]) for a, b in zip(ref, on_gpu, strict=True)
               for c in a.scores)
    print(f"parity, CUDA EP vs CPU (same decoded pixels): {same:.1%} identical category sets, "
          f"max score difference {diff:.4f}")
    ok = same >= 0.975 and diff <= 0.05

    # the decode ceiling: batched nvJPEG
    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    torchvision.io.decode_jpeg(data[: args.batch], device="cuda")  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(data), args.batch):
        torchvision.io.decode_jpeg(data[i : i + args.batch], device="cuda")
    torch.cuda.synchronize()
    ceiling = len(data) / (time.perf_counter() - t0)

    # end to end on the device
    size = gpu.card.input_size

    def device_path(chunk: list[Any]) -> list[Any]:
        imgs = torchvision.io.decode_jpeg(chunk, device="cuda",
                                          mode=torchvision.io.ImageReadMode.RGB)
        tensor, sizes = letterbox_gpu(list(imgs), size)
        hs = np.array([h for h, _ in sizes], dtype=np.int64)
        ws = np.array([w for _, w in sizes], dtype=np.int64)
        raw = gpu.run_model(tensor.float().cpu().numpy())
        return gpu.postprocess(raw, LetterboxMeta(hs, ws, np.maximum(hs, ws)))

    device_path(data[: args.batch])  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(data), args.batch):
        device_path(data[i : i + args.batch])
    end_to_end = len(data) / (time.perf_counter() - t0)
    dev = [d for i in range(0, args.parity, args.batch)
           for d in device_path(data[i : min(i + args.batch, args.parity)])]
    mapping = {k: v for k, v in cpu.card.category_map.items() if v}
    dev_sets = [frozenset(mapping[x.label] for x in d if x.label in mapping) for d in dev]
    same_dev = np.mean([category_set(a) == b for a, b in zip(ref, dev_sets, strict=True)])
    print(f"GPU JPEG decode ceiling (batch {args.batch}): {ceiling:.0f} img/s")
    print(f"end to end on the GPU: {end_to_end:.0f} img/s = {end_to_end / ceiling:.2f} of the "
          f"decode ceiling; category sets vs the CPU path: {same_dev:.1%} identical")
    print(json.dumps({"probe": found, "parity_identical_sets": round(float(same), 4),
                      "parity_max_diff": round(float(diff), 5), "decode_ceiling": round(ceiling),
                      "end_to_end": round(end_to_end), "device_path_identical_sets":
                      round(float(same_dev), 4)}))
    return 0 if ok else PARITY_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
