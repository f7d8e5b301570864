"""Classifier serving throughput against its own ceilings, measured in one run.

On the same JPEGs (1024 x 768, made from the bundled benign sample photos) and machine:

- D, the decode ceiling: JPEG bytes -> RGB -> the model's `Preprocess`, on every core;
- M, the model ceiling: onnxruntime on ready-made uint8 batches, on every core;
- E, end to end: bytes -> scores through `OnnxClassifierScorer`, as a batch job runs it.

Decode and model share the CPU, so the best E can reach is 1 / (1/D + 1/M); the printed ratio
E / that is the pipeline's efficiency (goal >= 0.85).  With a GPU the model runs beside the
CPU decode, and the ratio is E / min(D, M) for the torch backend with device JPEG decode.
The weights are untrained: speed does not depend on them.  No assertions; figures only.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_jpegs(n: int, *, size: tuple[int, int] = (1024, 768), seed: int = 0) -> list[bytes]:
    """n distinct JPEGs: random crops of the sample photos, upscaled, flipped, lightly noised."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(SAMPLES.glob("*.jpg"))]
    out = []
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(src[y0 : y0 + ch, x0 : x0 + cw])
        img = crop.resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        arr = np.clip(arr + rng.normal(0, 3, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# ---- work done in worker processes (module level so it pickles) ----------------------------
_STATE: dict[str, Any] = {}


def _init_worker(model_dir: str | None, size: int, reduce_to: int | None) -> None:
    from models.classifier.preprocess import Preprocess

    _STATE["pre"] = Preprocess(size=size)
    _STATE["reduce_to"] = reduce_to
    if model_dir is not None:
        from models.classifier.onnx_scorer import OnnxClassifierScorer

        _STATE["scorer"] = OnnxClassifierScorer(model=model_dir, threads=1)


def _decode_chunk(blobs: Sequence[bytes]) -> int:
    from models.classifier.data import decode_image

    batch = _STATE["pre"]([decode_image(b, reduce_to=_STATE["reduce_to"]) for b in blobs])
    return int(batch[:, 0, 0, 0].sum())  # a token result: no pixels cross the process boundary


def _model_chunk(batch: np.ndarray) -> int:
    return int(_STATE["scorer"].run_model(batch).shape[0])


def _score_chunk(blobs: Sequence[bytes]) -> list[float]:
    from models.classifier.data import decode_image

    scorer = _STATE["scorer"]
    images = [decode_image(b, reduce_to=_STATE["reduce_to"]) for b in blobs]
    return [max(r.scores.values()) for r in scorer.score(images)]


def _chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _rate(fn: Callable[[], None], n: int, repeats: int) -> float:
    """Images per second, best of `repeats` (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / min(times)


def export_untrained(arch: str, size: int, out: Path) -> Path:
    import torch

    from models.classifier.arch import build_net
    from models.classifier.calibrate import Calibration
    from models.classifier.checkpoint import (
        FORMAT,
        FORMAT_VERSION,
        load_checkpoint,
        save_checkpoint,
    )
    from models.classifier.export import export
    from models.classifier.preprocess import Preprocess

    cats = ("bench.a", "bench.b", "bench.c")
    pre = Preprocess(size=size)
    torch.manual_seed(0)
    net = build_net(arch, cats, pre)
    ckpt = out / "bench.pt"
    save_checkpoint(ckpt, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": f"bench-{arch}",
        "arch": arch, "categories": list(cats), "preprocessing": pre.to_dict(),
        "model": net.state_dict(), "calibration": Calibration.identity(cats).to_dict(),
    })
    probe = [np.random.default_rng(i).integers(0, 256, (300, 400, 3), dtype=np.uint8)
             for i in range(4)]
    return export(load_checkpoint(ckpt), out / "model", parity_images=probe).directory


def run(args: argparse.Namespace) -> dict[str, Any]:
    workers = args.workers or os.cpu_count() or 1
    blobs = make_jpegs(args.images)
    with tempfile.TemporaryDirectory(prefix="lookfirst-bench-") as tmp:
        model_dir = (Path(args.model) if args.model
                     else export_untrained(args.arch, args.size, Path(tmp)))
        from models.classifier.onnx_scorer import OnnxClassifierScorer

        scorer = OnnxClassifierScorer(model=model_dir, threads=workers)
        size = scorer.preprocessing.size
        reduce_to = size if args.reduced_decode else None
        from models.classifier.data import decode_image

        ready = scorer.preprocessing([decode_image(b, reduce_to=reduce_to) for b in blobs])
        batches = _chunks(ready, args.batch)
        results: dict[str, Any] = {
            "machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "images": len(blobs),
            "image_size": "1024x768 JPEG q90", "model": scorer.version, "input": size,
            "batch": args.batch, "workers": workers,
            "decode": "Pillow, DCT-reduced to >= input" if reduce_to else "Pillow, full size",
        }
        with ProcessPoolExecutor(workers, initializer=_init_worker,
                                 initargs=(str(model_dir), size, reduce_to)) as pool:
            def decode_all() -> None:
                list(pool.map(_decode_chunk, _chunks(blobs, args.batch)))

            def model_procs() -> None:
                list(pool.map(_model_chunk, batches))

            def end_to_end() -> None:
                list(pool.map(_score_chunk, _chunks(blobs, args.batch)))

            d = _rate(decode_all, len(blobs), args.repeats)
            m_procs = _rate(model_procs, len(blobs), args.repeats)
            e = _rate(end_to_end, len(blobs), args.repeats)

        def model_threads() -> None:
            for b in batches:
                scorer.run_model(b)

        m_threads = _rate(model_threads, len(blobs), args.repeats)
        m = max(m_procs, m_threads)
        ceiling = 1 / (1 / d + 1 / m)
        results.update({
            "D_decode_per_s": round(d, 1),
            "M_model_per_s": round(m, 1),
            "M_detail": {f"{workers} processes x 1 thread": round(m_procs, 1),
                         f"1 process x {workers} threads": round(m_threads, 1)},
            "E_end_to_end_per_s": round(e, 1),
            "shared_cpu_ceiling_per_s": round(ceiling, 1),
            "E_over_ceiling": round(e / ceiling, 3),
        })
        results["gpu"] = gpu_run(model_dir, blobs, args) if args.gpu else "skipped (--no-gpu)"
    return results


def gpu_run(model_dir: Path, blobs: list[bytes], args: argparse.Namespace) -> Any:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    # The torch backend needs a checkpoint; the untrained export left one next to the model.
    ckpt = model_dir.parent / "bench.pt"
    if not ckpt.exists():
        return "GPU figures need the untrained bench model (run without --model)"
    from models.classifier.torch_scorer import TorchClassifierScorer

    scorer = TorchClassifierScorer(checkpoint=ckpt, device="cuda")
    chunks = _chunks(blobs, args.gpu_batch)
    ready = [scorer.decode_batch(c) for c in chunks]
    torch.cuda.synchronize()

    def decode_only() -> None:
        for c in chunks:
            scorer.decode_batch(c)
        torch.cuda.synchronize()

    def model_only() -> None:
        for b in ready:
            scorer.run_model(b)

    def end_to_end() -> None:
        for c in chunks:
            scorer.score_encoded(c)

    d = _rate(decode_only, len(blobs), args.repeats)
    m = _rate(model_only, len(blobs), args.repeats)
    e = _rate(end_to_end, len(blobs), args.repeats)
    return {
        "device": torch.cuda.get_device_name(0), "precision": scorer.precision,
        "D_decode_per_s": round(d, 1), "M_model_per_s": round(m, 1),
        "E_end_to_end_per_s": round(e, 1), "E_over_min_D_M": round(e / min(d, m), 3),
        "batch": args.gpu_batch,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_bench", description=__doc__)
    p.add_argument("--arch", default="mobilenet_v3_large")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--model", help="an exported model directory (default: export an untrained "
                                   "--arch)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--gpu-batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-decode", dest="reduced_decode", action="store_false",
                   help="decode JPEGs at full size (default: DCT-reduced to the input size)")
    p.add_argument("--no-gpu", dest="gpu", action="store_false")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        if not args.model:
            print("model_bench: skipped: exporting the bench model needs the torch extra")
            return 0
    r = run(args)
    if args.json:
        import json

        print(json.dumps(r, indent=2))
        return 0
    print(f"classifier serving on {r['machine']}: {r['model']} at {r['input']} px, "
          f"{r['images']} x {r['image_size']}, {r['decode']}, batch {r['batch']}")
    print(f"  D decode ceiling       {r['D_decode_per_s']:8.1f} img/s")
    print(f"  M model ceiling        {r['M_model_per_s']:8.1f} img/s  {r['M_detail']}")
    print(f"  E end to end           {r['E_end_to_end_per_s']:8.1f} img/s")
    print(f"  E / (1/(1/D + 1/M))    {r['E_over_ceiling']:8.3f}   (goal >= 0.85; shared CPU "
          f"ceiling {r['shared_cpu_ceiling_per_s']} img/s)")
    g = r["gpu"]
    if isinstance(g, dict):
        print(f"  GPU {g['device']} ({g['precision']}): D {g['D_decode_per_s']}, M "
              f"{g['M_model_per_s']}, E {g['E_end_to_end_per_s']} img/s; E / min(D, M) "
              f"{g['E_over_min_D_M']}")
    else:
        print(f"  GPU: {g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
