"""The bank index at a million entries: lookups per second, recall against exact search,
memory, and the time to add entries, measured in one run.

A bank of N random PDQ hashes (default 1,000,000) is indexed twice: the default lookup
(`nflip=0`, complete up to 15 bits) and the exhaustive one (`nflip=1`, complete up to 31).
Queries are stored hashes with 0-31 random bits flipped (members) and random hashes
(non-members, which match nothing at this size: P(a random pair is within 31 bits) ~ 1e-35).
Exact search is faiss's brute-force scan of the same codes.  Goal (issue 14): >= 4,000
lookups/s on 2 cores, the figure published for HMA.  No assertions; figures only, and they
depend on how busy the machine is: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.hashing.index import PdqIndex

Codes = npt.NDArray[np.uint8]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def flipped(
    codes: Codes, rng: np.random.Generator, max_bits: int
) -> tuple[Codes, npt.NDArray[np.int64]]:
    """Each row with k ~ uniform(0..max_bits) distinct random bits flipped; returns (rows, k)."""
    out = codes.copy()
    ks = rng.integers(0, max_bits + 1, size=len(codes))
    for row, k in enumerate(ks):
        bits = rng.choice(256, size=int(k), replace=False)
        np.bitwise_xor.at(out[row], bits // 8, (1 << (bits % 8)).astype(np.uint8))
    return out, ks


def rate(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def threaded_rate(index: PdqIndex, queries: Codes, threads: int) -> float:
    parts = np.array_split(queries, threads)

    def work(part: Codes) -> None:
        for q in part:
            index.search(q)

    ts = [threading.Thread(target=work, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(queries) / (time.perf_counter() - t0)


def run_mode(exhaustive: bool, size: int, n_queries: int, max_flips: int) -> dict[str, str]:
    """One lookup mode, in a process of its own so that its memory is measured alone."""
    rng = np.random.default_rng(20261205)
    bank = rng.integers(0, 256, size=(size, 32), dtype=np.uint8)
    members, _ = flipped(bank[rng.integers(0, size, n_queries)], rng, max_flips)
    strangers = rng.integers(0, 256, size=(n_queries, 32), dtype=np.uint8)
    gc.collect()
    before = rss_mb()
    index = PdqIndex(exhaustive=exhaustive)
    t0 = time.perf_counter()
    index.add_many(np.arange(len(bank), dtype=np.int64), bank)
    build_s = time.perf_counter() - t0
    memory = rss_mb() - before

    queries = np.concatenate([members, strangers])
    single = rate(len(queries), lambda: [index.search(q) for q in queries])
    two = threaded_rate(index, queries, 2)
    batch = rate(len(queries), lambda: index.search_many(queries))
    images = rate(len(members) // 8,
                  lambda: [index.search_any(members[i : i + 8])
                           for i in range(0, len(members) - 7, 8)])

    found = index.search_many(queries)
    t0 = time.perf_counter()
    exact = index.exact_search_many(queries)
    exact_rate = len(queries) / (time.perf_counter() - t0)
    hits = total = false = 0
    by_band = {"0-15": [0, 0], "16-23": [0, 0], "24-31": [0, 0]}
    for got, ref in zip(found, exact, strict=True):
        g, r = set(got), set(ref)
        false += len(g - r)
        hits += len(g & r)
        total += len(r)
        for m in r:
            band = "0-15" if m.distance <= 15 else "16-23" if m.distance <= 23 else "24-31"
            by_band[band][0] += m in g
            by_band[band][1] += 1
    stranger_hits = sum(len(x) for x in found[len(members) :])

    extra = rng.integers(0, 256, size=(10_000, 32), dtype=np.uint8)
    base = len(bank)
    t_many = time.perf_counter()
    index.add_many(np.arange(base, base + 10_000, dtype=np.int64), extra)
    t_many = time.perf_counter() - t_many
    t_one = time.perf_counter()
    for i, code in enumerate(extra):
        index.add(base + 10_000 + i, code)
    t_one = time.perf_counter() - t_one
    t_rm = time.perf_counter()
    index.remove_many(range(base, base + 100))
    t_rm = time.perf_counter() - t_rm
    t_rebuild = time.perf_counter()
    index.rebuild()
    t_rebuild = time.perf_counter() - t_rebuild
    return {
        "lookup": f"nflip={1 if exhaustive else 0} ({'exhaustive' if exhaustive else 'default'})",
        "build (s)": f"{build_s:.1f}",
        "memory (MB)": f"{memory:.0f}",
        "lookups/s, 1 thread": f"{single:,.0f}",
        "lookups/s, 2 threads": f"{two:,.0f}",
        "lookups/s, batched": f"{batch:,.0f}",
        "images/s (8 dihedral hashes)": f"{images:,.0f}",
        "exact (brute force) lookups/s": f"{exact_rate:,.0f}",
        "recall vs exact": f"{hits / max(total, 1):.4f} ({hits}/{total})",
        "recall, 0-15 bits": _ratio(*by_band["0-15"]),
        "recall, 16-23 bits": _ratio(*by_band["16-23"]),
        "recall, 24-31 bits": _ratio(*by_band["24-31"]),
        "false matches": str(false),
        "non-member matches": str(stranger_hits),
        "add 10,000 (one call, s)": f"{t_many:.2f}",
        "add 10,000 (one by one, s)": f"{t_one:.2f}",
        "remove 100 (s)": f"{t_rm:.3f}",
        "rebuild (s)": f"{t_rebuild:.1f}",
    }


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.4f} ({a}/{b})" if b else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="bank entries")
    ap.add_argument("--queries", type=int, default=2_000, help="member and non-member queries")
    ap.add_argument("--max-flips", type=int, default=31)
    ap.add_argument("--mode", choices=["both", "default", "exhaustive"], default="both")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"bank {args.size:,} random PDQ hashes; {args.queries:,} members (0-{args.max_flips} "
          f"bits flipped) + {args.queries:,} non-members; {cpu_name()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at start")
    modes = {"both": [False, True], "default": [False], "exhaustive": [True]}[args.mode]
    spawn = multiprocessing.get_context("spawn")
    results = []
    for m in modes:
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            results.append(
                pool.submit(run_mode, m, args.size, args.queries, args.max_flips).result()
            )
    width = max(len(k) for k in results[0])
    for key in results[0]:
        print(f"{key:<{width}}  " + "  ".join(f"{r[key]:>26}" for r in results))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
