"""POST /v1/classify under load, micro-batching on vs off (max batch 1), with the real NudeNet
model behind a real uvicorn on 127.0.0.1.  Throughput and p50/p95/p99 latency at concurrency
1, 8, 32 and 64; the ratio of the two at each level; and where a request's time goes, from the
server's own histograms for the same requests (decode, queue wait, model, record), so that the
framework's share of p50 is measured in one run rather than against a separate baseline.

    python -m bench.api_bench [--requests 32,64,128,160] [--max-batch 16] [--wait-ms 4]

Both servers run at once and the modes are interleaved level by level, so each ratio compares
runs made seconds apart.  The load generator (httpx, asyncio) shares the machine's cores with
the server: on a 2-core machine its work is in every number, equally for both modes.  No
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.integration.api_conftest_helpers import ApiServer

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
LEVELS = (1, 8, 32, 64)
#: (metric, label filter) whose _sum and _count are read before and after each level
SERIES = {
    "server": ("lookfirst_http_request_duration_seconds", 'route="/v1/classify",status="200"'),
    "decode": ("lookfirst_decode_duration_seconds", ""),
    "wait": ("lookfirst_model_queue_wait_seconds", ""),
    "model": ("lookfirst_model_batch_duration_seconds", ""),
    "record": ("lookfirst_record_duration_seconds", ""),
    "batch": ("lookfirst_model_batch_size", ""),
}


@dataclass
class Level:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    #: name -> (sum, count) accrued during this level
    server: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs)) - 1))]

    def mean_ms(self, name: str) -> float:
        total, count = self.server.get(name, (0.0, 0.0))
        return total / count * 1000 if count else 0.0

    @property
    def mean_batch(self) -> float:
        total, count = self.server.get("batch", (0.0, 0.0))
        return total / count if count else 0.0


def _snapshot(url: str) -> dict[str, tuple[float, float]]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for name, (metric, labels) in SERIES.items():
        values = []
        for suffix in ("_sum", "_count"):
            total = 0.0
            for m in re.finditer(rf"^{metric}{suffix}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
                if labels in (m.group(1) or ""):
                    total += float(m.group(2))
            values.append(total)
        out[name] = (values[0], values[1])
    return out


async def _load(url: str, key: str, images: list[bytes], concurrency: int,
                n: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def worker() -> None:
            nonlocal errors
            for i in todo:
                data = images[i % len(images)]
                t0 = time.perf_counter()
                r = await client.post(
                    "/v1/classify", content=data, headers={"content-type": "image/jpeg"},
                    params={"account_id": "acct-bench", "upload_id": uuid.uuid4().hex})
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


def _start(max_batch: int, wait_ms: float, data_dir: Path) -> tuple[ApiServer, str]:
    from tests.integration.api_conftest_helpers import start_server

    env = {
        "LOOKFIRST_API_BATCH_MAX_SIZE": str(max_batch),
        "LOOKFIRST_API_BATCH_MAX_WAIT_MS": str(wait_ms),
        "LOOKFIRST_API_QUEUE_LIMIT": "512",
        "LOOKFIRST_MODEL_THREADS": "0",
        "LOOKFIRST_LOG_LEVEL": "WARNING",
    }
    server = start_server(data_dir, scorer="nudenet", env=env)
    key = server.new_key("classify", rate_per_minute=100_000_000, name="bench")
    asyncio.run(_load(server.url, key, [SAMPLES[0].read_bytes()], 4, 16))  # warm up
    return server, key


def _run_modes(modes: dict[str, tuple[int, float]], counts: dict[int, int],
               images: list[bytes]) -> tuple[dict[str, list[Level]], float]:
    out: dict[str, list[Level]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="lookfirst-bench-") as tmp:
        servers = {m: _start(b, w, Path(tmp) / m.replace("=", ""))
                   for m, (b, w) in modes.items()}
        try:
            for c in LEVELS:
                for mode, (server, key) in servers.items():
                    before = _snapshot(server.url)
                    seconds, lat, errors = asyncio.run(
                        _load(server.url, key, images, c, counts[c]))
                    after = _snapshot(server.url)
                    delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1])
                             for k in after}
                    out[mode].append(Level(mode, c, counts[c], seconds, lat, errors, delta))
            server, _ = next(iter(servers.values()))
            with httpx.Client(base_url=server.url) as client:
                live = []
                for i in range(60):
                    t0 = time.perf_counter()
                    client.get("/health/live")
                    if i >= 10:
                        live.append((time.perf_counter() - t0) * 1000)
            live_p50 = sorted(live)[len(live) // 2]
        finally:
            for server, _ in servers.values():
                server.stop()
    return out, live_p50


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", default="32,64,128,160",
                   help="requests per level, for concurrency 1,8,32,64")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--wait-ms", type=float, default=4.0)
    args = p.parse_args(argv or [])
    counts = dict(zip(LEVELS, (int(x) for x in args.requests.split(",")), strict=True))
    images = [path.read_bytes() for path in SAMPLES]
    print(f"images: {len(images)} sample JPEGs (scikit-image photos, 300 x 451 to 512 x 512), "
          f"{os.cpu_count()} CPU cores; requests per level {counts}")

    results, live_p50 = _run_modes(
        {"batched": (args.max_batch, args.wait_ms), "batch=1": (1, 0.0)}, counts, images)

    print(f"\n{'mode':<8} {'conc':>4} {'reqs':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'batch':>6} {'errors':>6}")
    for mode, levels in results.items():
        for lv in levels:
            print(f"{mode:<8} {lv.concurrency:>4} {lv.requests:>5} {lv.throughput:>7.1f} "
                  f"{lv.pct(50):>8.1f} {lv.pct(95):>8.1f} {lv.pct(99):>8.1f} "
                  f"{lv.mean_batch:>6.2f} {lv.errors:>6}")

    print("\nbatched / batch=1:")
    for on, off in zip(results["batched"], results["batch=1"], strict=True):
        print(f"  concurrency {on.concurrency:>2}: throughput x{on.throughput / off.throughput:.2f}"
              f", p95 {on.pct(95):.1f} vs {off.pct(95):.1f} ms"
              f" (x{on.pct(95) / off.pct(95):.2f})")

    print("\nwhere the time goes (server means, ms per request; model = its batch's time):")
    print(f"  {'mode':<8} {'conc':>4} {'client':>8} {'server':>8} {'decode':>7} {'wait':>7} "
          f"{'model':>7} {'record':>7} {'rest':>7}")
    for mode, levels in results.items():
        for lv in levels:
            client = sum(lv.latencies_ms) / len(lv.latencies_ms)
            parts = [lv.mean_ms(k) for k in ("decode", "wait", "model", "record")]
            rest = lv.mean_ms("server") - sum(parts)
            print(f"  {mode:<8} {lv.concurrency:>4} {client:>8.1f} {lv.mean_ms('server'):>8.1f} "
                  + " ".join(f"{x:>7.1f}" for x in parts) + f" {rest:>7.1f}")
    c1 = results["batched"][0]
    work = c1.mean_ms("decode") + c1.mean_ms("model")
    overhead = c1.pct(50) - work
    print(f"\nframework overhead at concurrency 1 (batched server): p50 {c1.pct(50):.1f} ms, of "
          f"which decode + model {work:.1f} ms; the rest ({overhead:.1f} ms: HTTP and client, "
          f"auth, database lookups and record, blob write) is {overhead / c1.pct(50):.0%} of "
          f"p50.  A bare GET /health/live round trip: p50 {live_p50:.2f} ms.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
