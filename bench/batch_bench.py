"""Batch jobs as whole processes: NudeNet's own loop vs the engine (fp32, the faster model, Ray).

On the same N benign 1024 x 768 JPEGs (made from the sample photos) and machine, each timed as
a fresh process from start to exit (imports and model loads included, as a user would):

- `NudeDetector().detect(path)` in a loop, NudeNet's own way;
- `python -m pipeline.batch FOLDER --model fp32` (the engine, fp32: NudeNet's exact results);
- the same with `--model auto` (the faster variant whose measured agreement passes the bar;
  its card is measured before timing, so measuring is not timed);
- the same with `--engine ray` (the Ray engine's overhead against the local one);
- peak memory (the largest process's RSS) at two manifest lengths (1k and 10k rows by
  default): flat means streamed;
- the agreement cost of DCT-reduced JPEG decoding (simplejpeg, scale >= the model's input),
  measured in this process: how many images' category sets change against full decoding.

Ratios are printed, never asserted (goal: >= 2.5x NudeNet's loop on any CPU, >= 4x with
bf16/AMX).  `--quick` is a small version for a busy machine; the real run is the default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"

_WRAP = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "dt = time.perf_counter() - t\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stderr.write(f'\\n@@ {rc} {dt:.3f} {rss}\\n')\n"
    "sys.exit(rc)\n"
)
_NUDENET_LOOP = (
    "import sys\n"
    "from nudenet import NudeDetector\n"
    "d = NudeDetector()\n"
    "for p in open(sys.argv[1]).read().split():\n"
    "    d.detect(p)\n"
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds from start to exit of the whole process, and its largest process's peak RSS
    (KiB): the wrapper reaps the job, which reaps its workers."""
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    tail = [line for line in proc.stderr.splitlines() if line.startswith("@@ ")]
    if proc.returncode != 0 or not tail:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-2000:]}")
    _, rc, seconds, rss = tail[-1].split()
    return float(seconds), int(rss)


def make_folder(folder: Path, n: int, seed: int) -> list[Path]:
    from models.calibration import as_jpeg, base_photos, derived_images

    folder.mkdir(parents=True, exist_ok=True)
    bases = base_photos([SAMPLES])
    paths = []
    for i in range(0, n, 50):  # in slices: 50 images of 1024 x 768 at a time in memory
        for j, image in enumerate(derived_images(bases, min(50, n - i), seed=seed + i)):
            p = folder / f"img{i + j:06d}.jpg"
            p.write_bytes(as_jpeg(image, quality=90))
            paths.append(p)
    return paths


def manifest_of(paths: list[Path], rows: int, target: Path) -> Path:
    """`rows` rows cycling over the images, each its own upload."""
    with open(target, "w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"path": str(paths[i % len(paths)]), "upload_id": f"m{i}"})
                     + "\n")
    return target


def job(source: Path, work: Path, name: str, env: dict[str, str], *extra: str) -> tuple[
        float, int]:
    run_env = {**env, "LOOKFIRST_DATABASE_URL": f"sqlite:///{work / (name + '.db')}"}
    shutil.rmtree(work / "data" / "blobs", ignore_errors=True)
    return timed([sys.executable, "-m", "pipeline.batch", str(source),
                  "--out", str(work / f"{name}.parquet"), *extra], run_env)


def reduced_decode_cost(paths: list[Path]) -> dict[str, Any]:
    """Category sets under full decoding vs DCT-reduced decoding (simplejpeg), fp32."""
    try:
        import simplejpeg
    except ImportError:
        return {"skipped": "simplejpeg is not installed"}
    from models.nudenet import NudeNetScorer
    from models.nudenet_fast import category_set
    from pipeline.ingest import ingest_bytes

    scorer = NudeNetScorer(threads=max(1, os.cpu_count() or 1))
    size = scorer.card.input_size
    data = [p.read_bytes() for p in paths]
    t0 = time.perf_counter()
    full = [ingest_bytes(d, max_bytes=1 << 26, max_pixels=1 << 28).pixels for d in data]
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    reduced = [simplejpeg.decode_jpeg(d, colorspace="RGB", min_width=size, min_height=size)
               for d in data]
    t_reduced = time.perf_counter() - t0
    changed = 0
    for i in range(0, len(data), 8):
        a = scorer.score(full[i : i + 8])
        b = scorer.score(reduced[i : i + 8])
        changed += sum(category_set(x) != category_set(y) for x, y in zip(a, b, strict=True))
    return {"images": len(data), "changed_category_sets": changed,
            "changed_share": round(changed / len(data), 4),
            "decode_full_per_s": round(len(data) / t_full, 1),
            "decode_reduced_per_s": round(len(data) / t_reduced, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="images timed (>= 400 for the table)")
    ap.add_argument("--memory-rows", default="1000,10000",
                    help="manifest lengths whose peak memory is compared")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="a small version (120 images, 300 and 3000 rows) for a busy machine")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    n = 120 if args.quick else args.n
    memory_rows = [300, 3000] if args.quick else [int(x) for x in args.memory_rows.split(",")]
    work = Path(tempfile.mkdtemp(prefix="lookfirst-batch-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORT_DISABLE_TELEMETRY": "1",
           "LOOKFIRST_DATA_DIR": str(work / "data"), "RAY_USAGE_STATS_ENABLED": "0"}
    workers = ["--workers", str(args.workers)] if args.workers else []
    try:
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.platform()}")
        paths = make_folder(work / "images", n, seed=100)
        listing = work / "paths.txt"
        listing.write_text("\n".join(str(p) for p in paths))
        rows: list[tuple[str, float, int]] = []
        t, rss = timed([sys.executable, "-c", _NUDENET_LOOP, str(listing)], env)
        rows.append(("NudeNet NudeDetector.detect loop", t, rss))
        t, rss = job(work / "images", work, "fp32", env, "--model", "fp32", *workers)
        rows.append(("lookfirst batch, fp32", t, rss))
        # measure the faster variant's agreement once (its card), outside the timing
        job(work / "images", work, "warmup", env, "--model", "auto", *workers)
        card = _chosen_card(work / "warmup.parquet", work / "data" / "models")
        t, rss = job(work / "images", work, "auto", env, "--model", "auto", *workers)
        rows.append((f"lookfirst batch, faster model ({card.get('variant', 'fp32')})", t, rss))
        if not args.no_ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                print("ray not installed (pip install '.[cluster]'): Ray overhead skipped")
            else:
                t, rss = job(work / "images", work, "ray", env, "--model", "fp32",
                             "--engine", "ray", *workers)
                rows.append(("lookfirst batch, fp32, Ray engine (local)", t, rss))
        base = rows[0][1]
        print(f"\n{n} JPEGs 1024x768, whole processes (start to exit)")
        print(f"{'what':<52}{'s':>8}{'img/s':>9}{'x loop':>8}{'peak MiB':>10}")
        for name, secs, rss in rows:
            print(f"{name:<52}{secs:>8.1f}{n / secs:>9.1f}{base / secs:>8.2f}{rss / 1024:>10.0f}")
        fp32_s = rows[1][1]
        if len(rows) > 3:
            print(f"Ray engine overhead vs local (fp32): {rows[3][1] / fp32_s:.2f}x the time")
        if card:
            agreement = json.dumps(card.get("agreement_vs_fp32"))
            print(f"faster model agreement vs fp32 (card): {agreement}")
        print("\npeak memory by manifest length (fp32, rows cycle over the images):")
        for count in memory_rows:
            m = manifest_of(paths, count, work / f"rows{count}.jsonl")
            secs, rss = job(m, work, f"rows{count}", env, "--model", "fp32", *workers)
            summary = json.loads((work / f"rows{count}.parquet" / "_summary.json").read_text())
            main_mib = summary["last_run"]["peak_rss_mib"]
            print(f"  {count:>7} rows: main process {main_mib} MiB peak, largest process "
                  f"{rss / 1024:.0f} MiB, {count / secs:.1f} rows/s")
        print("\nDCT-reduced decoding, agreement cost (fp32, this process):")
        print("  " + json.dumps(reduced_decode_cost(paths[: min(n, 200)])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _chosen_card(out: Path, models: Path) -> dict[str, Any]:
    summary = json.loads((out / "_summary.json").read_text())
    variant = summary.get("model", "fp32")
    card = models / variant / "card.json"
    return json.loads(card.read_text()) if card.exists() else {}


if __name__ == "__main__":
    raise SystemExit(main())
