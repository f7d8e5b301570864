"""Batch jobs as whole processes: NudeNet's own loop vs `lookfirst batch` (fp32, the faster
model, Ray), and the REST API at saturation against the batch engine.

On the same N benign 1024 x 768 JPEGs (made from the sample photos) and machine, each timed as
a fresh process from start to exit (imports and model loads included, as a user would; each
batch job into an empty store created beforehand, as a backfill runs against the service's):

- `NudeDetector().detect(path)` in a loop, NudeNet's own way;
- `lookfirst batch FOLDER --model fp32` (the engine, fp32: NudeNet's exact results);
- the same with `--model auto` (the faster variant whose measured agreement passes the bar;
  its card is measured before timing, so measuring is not timed);
- the same with `--engine ray` (the Ray engine's overhead against the local one);
- peak memory (the largest process's RSS) at two manifest lengths (1k and 10k rows by
  default): flat means streamed;
- the REST API at saturation: `lookfirst serve` (2 workers on PostgreSQL when a database URL
  is given, else 1 on SQLite), the same images POSTed to /v1/classify by 32 concurrent
  clients, against the batch engine's images/s;
- the agreement cost of DCT-reduced JPEG decoding (simplejpeg, scale >= the model's input),
  measured in this process: how many images' category sets change against full decoding;
- the ceilings, measured in this process on the same images: each stage a worker runs (read,
  safe decode, PDQ, blob, the model in fp32 and as the faster variant), one thread each, and
  NudeNet's `detect` once loaded.  Every core running a worker's stages and nothing else (no
  start, no main process) is the most the engine can reach here, and every core running the
  model alone the most any engine that runs this model can; both are printed as ratios to
  NudeNet's loop, so a run says whether the goal is reachable on its machine at all.  The
  model's operations are counted on its graph and set against one core's dense fp32 MatMul:
  a model near that figure is compute-bound, and only a faster core or a lower precision with
  hardware for it (VNNI, AMX, a GPU) moves it.

Rounds alternate the commands (NudeNet, fp32, auto, ...) and the table keeps each command's
fastest round, so a neighbour's burst on a shared machine weighs on no one command.  Ratios
are printed, never asserted (goal: >= 2.5x NudeNet's loop on any CPU, >= 4x with bf16/AMX;
REST >= 0.85x the batch engine).  `--quick` is a small version for a busy machine.

    python -m bench.batch_bench [--n 400] [--rounds 3] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
LOOKFIRST = Path(sys.executable).parent / "lookfirst"

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


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = {"amx_bf16", "avx512_bf16", "avx512f", "avx2"} & set(text.split())
    return " ".join(sorted(flags))


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
        float, int, dict[str, Any]]:
    """One `lookfirst batch` run into an empty store: (seconds, peak RSS KiB, its summary).

    The store is created (`lookfirst db upgrade`) before the timing: a backfill runs against
    the store the service already uses, and creating one is set-up done once, like
    installing NudeNet."""
    run_env = {**env, "LOOKFIRST_DATABASE_URL": f"sqlite:///{work / (name + '.db')}"}
    (work / f"{name}.db").unlink(missing_ok=True)
    shutil.rmtree(work / f"{name}.parquet", ignore_errors=True)
    shutil.rmtree(work / "data" / "blobs", ignore_errors=True)
    subprocess.run([str(LOOKFIRST), "db", "upgrade"], env=run_env, cwd=ROOT,
                   capture_output=True, check=True)
    seconds, rss = timed([str(LOOKFIRST), "batch", str(source), "--out",
                          str(work / f"{name}.parquet"), *extra], run_env)
    summary = json.loads((work / f"{name}.parquet" / "_summary.json").read_text())
    return seconds, rss, summary


# ---- REST at saturation ----------------------------------------------------------------------
def rest_throughput(paths: Sequence[Path], work: Path, env: dict[str, str],
                    database_url: str | None, concurrency: int) -> dict[str, Any]:
    """`lookfirst serve` (2 workers on PostgreSQL, else 1 on SQLite) under `concurrency`
    clients POSTing the images once each; images/s from the first request to the last."""
    sys.path.insert(0, str(ROOT))
    from bench.api_bench import _load

    workers = 2 if database_url else 1
    run_env = {**env, "LOOKFIRST_API_QUEUE_LIMIT": "512", "LOOKFIRST_LOG_LEVEL": "WARNING"}
    made_db = None
    if database_url:
        made_db = _fresh_pg(database_url)
        run_env["LOOKFIRST_DATABASE_URL"] = made_db
    else:
        for leftover in work.glob("rest.db*"):  # a round before this one: start empty
            leftover.unlink()
        run_env["LOOKFIRST_DATABASE_URL"] = f"sqlite:///{work / 'rest.db'}"
    shutil.rmtree(work / "data" / "blobs", ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(LOOKFIRST), "serve", "--workers", str(workers), "--port",
                             str(port)], env=run_env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + 180
        ready = 0
        while ready < 3:  # a few answers in a row: each worker loaded its model, likely
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "serve.log").read_text()[-3000:])
            try:
                ready = ready + 1 if httpx.get(f"{url}/health/ready").status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            time.sleep(0.2)
        key = subprocess.run([str(LOOKFIRST), "keys", "create", "--scope", "classify",
                              "--rate-per-minute", "100000000", "--name", "bench", "--json"],
                             env=run_env, cwd=ROOT, capture_output=True, text=True,
                             check=True)
        raw = json.loads(key.stdout)["key"]
        images = [p.read_bytes() for p in paths]
        asyncio.run(_load(url, raw, images[:8], 8, 32))  # warm up every worker
        seconds, latencies, errors = asyncio.run(_load(url, raw, images, concurrency,
                                                        len(images)))
        version = httpx.get(f"{url}/health/ready").json().get("model_version")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        if made_db and database_url:
            _drop_pg(database_url, made_db)
    lat = sorted(latencies)
    return {"workers": workers, "database": "postgresql" if database_url else "sqlite",
            "images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds,
            "p50_ms": lat[len(lat) // 2], "p95_ms": lat[int(len(lat) * 0.95) - 1],
            "errors": errors, "model_version": version}


def _fresh_pg(base: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"lookfirst_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _drop_pg(base: str, made: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(made).database
    admin = create_engine(make_url(base).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = :n"), {"n": name})
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


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


# ---- ceilings: what this machine allows at all ------------------------------------------------
def stage_costs(paths: Sequence[Path], models_root: Path, variant: str) -> dict[str, float]:
    """Milliseconds an image of each stage a batch worker runs (`Predictor`), one thread, in
    this process, on the same images: read, safe decode, PDQ, blob write (durable), and the
    model (pre- and post-processing included) in fp32 and as the faster variant."""
    from models.nudenet import NudeNetScorer
    from models.nudenet_fast import load_variant
    from pipeline.blobs import LocalBlobStore
    from pipeline.ingest import ingest_bytes, with_pdq

    n = len(paths)

    def per_image(fn: Any) -> float:
        """The faster of two passes (a ceiling: a neighbour's burst only slows a pass)."""
        fn(0, min(8, n))  # warm: first-call allocations are not the steady state
        passes = []
        for _ in range(2):
            t0 = time.perf_counter()
            for i in range(0, n, 8):
                fn(i, min(n, i + 8))
            passes.append((time.perf_counter() - t0) / n * 1e3)
        return min(passes)

    data: list[bytes] = []
    read = per_image(lambda a, b: data.extend(p.read_bytes() for p in paths[a:b]))
    data = data[-n:]  # the last pass's
    images = [ingest_bytes(d, max_bytes=1 << 26, max_pixels=1 << 28) for d in data]
    costs = {"read": read,
             "decode": per_image(lambda a, b: [ingest_bytes(d, max_bytes=1 << 26,
                                                            max_pixels=1 << 28)
                                               for d in data[a:b]]),
             "pdq": per_image(lambda a, b: [with_pdq(im) for im in images[a:b]])}
    with tempfile.TemporaryDirectory(prefix="lookfirst-blobs-") as blob_dir:
        blobs = LocalBlobStore(Path(blob_dir))
        costs["blob"] = per_image(lambda a, b: blobs.put_many(data[a:b]))
    pixels = [im.pixels for im in images]
    fp32 = NudeNetScorer(threads=1)
    costs["model fp32"] = per_image(lambda a, b: fp32.score(pixels[a:b]))
    if variant != "fp32":
        faster = load_variant(variant, root=models_root, threads=1)
        costs[f"model {variant}"] = per_image(lambda a, b: faster.score(pixels[a:b]))
    return costs


def nudenet_loop_ms(paths: Sequence[Path]) -> float:
    """Milliseconds an image of NudeNet's own `detect` in this process once loaded (its
    default threads: every core): the loop's steady state, without its start."""
    from nudenet import NudeDetector

    detector = NudeDetector()
    detector.detect(str(paths[0]))
    passes = []
    for _ in range(2):  # the faster pass, as for the stages: the ratios are not flattered
        t0 = time.perf_counter()
        for p in paths:
            detector.detect(str(p))
        passes.append((time.perf_counter() - t0) / len(paths) * 1e3)
    return min(passes)


def model_gflop(weights: Path, size: int) -> float | None:
    """Floating-point operations of one image through the model (2 x the multiply-adds of its
    convolutions and matrix products, counted on the graph at the model's input size); None
    without the `onnx` package."""
    try:
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError:
        return None
    import numpy as np
    model = onnx.load(str(weights))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, size, size),
                          strict=False):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    weights_of = {w.name: numpy_helper.to_array(w).shape for w in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            _, per_group, kh, kw = weights_of[node.input[1]]
            out = shapes[node.output[0]]
            macs += int(np.prod(out[1:])) * per_group * kh * kw
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0], [])
            b = shapes.get(node.input[1]) or list(weights_of.get(node.input[1], ()))
            if a and b:
                macs += int(np.prod(a)) * int(b[-1])
    return 2 * macs / 1e9


def dense_fp32_gflops(n: int = 1024, runs: int = 4, blocks: int = 5) -> float | None:
    """One core's dense fp32 throughput as onnxruntime reaches it (an n x n x n MatMul, one
    thread; the fastest of `blocks` blocks of `runs`): the most a compute-bound fp32 model can
    get from a core.  None without `onnx`."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        return None
    import numpy as np
    import onnxruntime as ort

    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.random((n, n), dtype=np.float32), "b": rng.random((n, n), dtype=np.float32)}
    session.run(None, feed)
    fastest = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        fastest = min(fastest, time.perf_counter() - t0)
    return 2 * n**3 * runs / fastest / 1e9


def print_ceilings(costs: dict[str, float], loop_rate: float, loop_steady_ms: float,
                   engine_rates: dict[str, float], gflop: float | None,
                   dense: float | None) -> None:
    """The engine's ceiling on this machine (every core running a worker's stages, nothing
    else: no start, no main process) and the model-alone ceiling, against NudeNet's loop as the
    table measured it (`loop_rate`, images/s, whole process) and in its steady state
    (`loop_steady_ms`, once loaded, no start either); the engine's rate inside its job as a
    share of its ceiling."""
    cores = os.cpu_count() or 1
    steady_rate = 1e3 / loop_steady_ms
    shared = costs["read"] + costs["decode"] + costs["pdq"] + costs["blob"]
    print(f"\nceilings (ms an image, one thread each, the faster of two passes, this process; "
          f"{cores} cores):")
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items())
          + f"; NudeNet's detect once loaded (its own threads) {loop_steady_ms:.1f} = "
          f"{steady_rate:.1f} images/s (its loop in the table: {loop_rate:.1f})")
    for name, model_ms in ((k, v) for k, v in costs.items() if k.startswith("model ")):
        variant = name.removeprefix("model ")
        ceiling = cores * 1e3 / (shared + model_ms)
        alone = cores * 1e3 / model_ms
        line = (f"  {variant}: a worker's stages on every core {ceiling:.1f} images/s = "
                f"{ceiling / loop_rate:.2f}x the loop ({ceiling / steady_rate:.2f}x its steady "
                f"state); the model alone {alone:.1f} images/s = {alone / loop_rate:.2f}x "
                f"({alone / steady_rate:.2f}x)")
        if variant in engine_rates:
            line += (f"; the engine inside its job {engine_rates[variant]:.1f} images/s"
                     f" = {engine_rates[variant] / ceiling:.0%} of its ceiling")
        print(line)
    if gflop is not None and dense is not None:
        reached = gflop / (costs["model fp32"] / 1e3)
        print(f"  the model: {gflop:.2f} GFLOP an image; fp32 on one thread {reached:.0f} GFLOP/s"
              f" (pre- and post-processing included) against {dense:.0f} GFLOP/s for a dense "
              f"fp32 MatMul on one thread: {reached / dense:.0%} of what the core does at best")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="images timed (>= 400 for the table)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the timed commands; each command's fastest round is kept")
    ap.add_argument("--memory-rows", default="1000,10000",
                    help="manifest lengths whose peak memory is compared")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="a small version (120 images, 1 round, 300 and 3000 rows)")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-rest", action="store_true")
    ap.add_argument("--database-url", default=os.environ.get("LOOKFIRST_TEST_DATABASE_URL"),
                    help="PostgreSQL server for the REST run (2 workers); default "
                         "LOOKFIRST_TEST_DATABASE_URL; without one, 1 worker on SQLite")
    ap.add_argument("--concurrency", type=int, default=32, help="REST clients at once")
    args = ap.parse_args()
    n = 120 if args.quick else args.n
    rounds = 1 if args.quick else max(1, args.rounds)
    memory_rows = [300, 3000] if args.quick else [int(x) for x in args.memory_rows.split(",")]
    work = Path(tempfile.mkdtemp(prefix="lookfirst-batch-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORT_DISABLE_TELEMETRY": "1",
           "LOOKFIRST_DATA_DIR": str(work / "data"), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {k: v for k, v in env.items()
           if not k.startswith("LOOKFIRST_") or k == "LOOKFIRST_DATA_DIR"}
    workers = ["--workers", str(args.workers)] if args.workers else []
    try:
        print(f"machine: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, "
              f"{platform.platform()}; load average {os.getloadavg()[0]:.1f} at the start")
        paths = make_folder(work / "images", n, seed=100)
        listing = work / "paths.txt"
        listing.write_text("\n".join(str(p) for p in paths))
        # measure the faster variant's agreement once (its card), outside the timing
        _, _, warm = job(work / "images", work, "warmup", env, "--model", "auto", *workers)
        variant = warm.get("model", "fp32")
        card = _card(work / "data" / "models", variant)
        commands: list[tuple[str, Any]] = [
            ("NudeNet NudeDetector.detect loop",
             lambda: timed([sys.executable, "-c", _NUDENET_LOOP, str(listing)], env)),
            ("lookfirst batch, fp32",
             lambda: job(work / "images", work, "fp32", env, "--model", "fp32", *workers)),
            (f"lookfirst batch, faster model ({variant})",
             lambda: job(work / "images", work, "auto", env, "--model", "auto", *workers)),
        ]
        if not args.no_ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                print("ray not installed (pip install '.[cluster]'): Ray overhead skipped")
            else:
                commands.append(("lookfirst batch, fp32, Ray engine (local)",
                                 lambda: job(work / "images", work, "ray", env, "--model",
                                             "fp32", "--engine", "ray", *workers)))
        best: dict[str, tuple[float, int, dict[str, Any]]] = {}
        for r in range(rounds):
            for name, run in commands:
                got = run()
                seconds, rss = got[0], got[1]
                summary = got[2] if len(got) > 2 else {}
                print(f"  round {r + 1}: {name}: {seconds:.2f} s", flush=True)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, rss, summary)
        base = best[commands[0][0]][0]
        print(f"\n{n} JPEGs 1024x768, whole processes (start to exit), fastest of {rounds}")
        print(f"{'what':<52}{'s':>8}{'img/s':>9}{'x loop':>8}{'peak MiB':>10}")
        for name, _ in commands:
            secs, rss, _ = best[name]
            print(f"{name:<52}{secs:>8.2f}{n / secs:>9.1f}{base / secs:>8.2f}{rss / 1024:>10.0f}")
        fp32_s = best["lookfirst batch, fp32"][0]
        ray_name = "lookfirst batch, fp32, Ray engine (local)"
        if ray_name in best:
            print(f"Ray engine overhead vs local (fp32): {best[ray_name][0] / fp32_s:.2f}x the "
                  "time")
        if card:
            print(f"faster model ({variant}) agreement vs fp32 (its card): "
                  f"{json.dumps(card.get('agreement_vs_fp32'))}")
        auto_summary = best[commands[2][0]][2]
        in_job = auto_summary.get("last_run", {})
        engine_rate = n / in_job["seconds"] if in_job.get("seconds") else n / best[
            commands[2][0]][0]
        engine_rates = {"fp32": n / best["lookfirst batch, fp32"][2]["last_run"]["seconds"],
                        variant: engine_rate}
        from models.nudenet import NudeNetScorer

        fp32_scorer = NudeNetScorer(threads=1)
        print_ceilings(stage_costs(paths[: min(n, 96)], work / "data" / "models", variant),
                       loop_rate=n / base, loop_steady_ms=nudenet_loop_ms(paths[: min(n, 96)]),
                       engine_rates=engine_rates,
                       gflop=model_gflop(fp32_scorer.weights_path, fp32_scorer.card.input_size),
                       dense=dense_fp32_gflops())
        del fp32_scorer
        if not args.no_rest:
            # the fastest of as many rounds as the batch commands had, as they are kept
            runs = [rest_throughput(paths, work, env, args.database_url, args.concurrency)
                    for _ in range(rounds)]
            rest = max(runs, key=lambda r: float(r["images_per_s"]))
            each = ", ".join(f"{r['images_per_s']:.1f}" for r in runs)
            print(f"\nREST at saturation ({rest['workers']} worker(s) on {rest['database']}, "
                  f"{args.concurrency} clients, {rest['model_version']}; rounds: "
                  f"{each} images/s, "
                  f"the fastest kept): "
                  f"{rest['images_per_s']:.1f} images/s, p50 {rest['p50_ms']:.0f} ms, p95 "
                  f"{rest['p95_ms']:.0f} ms, {rest['errors']} errors; the batch engine "
                  f"({variant}, inside the job: {engine_rate:.1f} images/s): REST / batch = "
                  f"{rest['images_per_s'] / engine_rate:.2f}")
        print("\npeak memory by manifest length (fp32, rows cycle over the images):")
        for count in memory_rows:
            m = manifest_of(paths, count, work / f"rows{count}.jsonl")
            secs, rss, summary = job(m, work, f"rows{count}", env, "--model", "fp32", *workers)
            main_mib = summary["last_run"]["peak_rss_mib"]
            print(f"  {count:>7} rows: main process {main_mib} MiB peak, largest process "
                  f"{rss / 1024:.0f} MiB, {count / secs:.1f} rows/s")
        print("\nDCT-reduced decoding, agreement cost (fp32, this process):")
        print("  " + json.dumps(reduced_decode_cost(paths[: min(n, 200)])))
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _card(models: Path, variant: str) -> dict[str, Any]:
    card = models / variant / "card.json"
    return json.loads(card.read_text()) if card.exists() else {}


if __name__ == "__main__":
    raise SystemExit(main())
