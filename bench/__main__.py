"""Run every `bench/*_bench.py` module's main(), in name order (`python -m bench [NAME ...]`).

Modules are discovered, not listed, so a new benchmark needs no change here.  One failing
benchmark is reported and the others still run; the exit code says whether any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*_bench.py"))


def main(argv: list[str]) -> int:
    names = discover()
    wanted = [a.removesuffix(".py").removeprefix("bench.") for a in argv]
    if wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(names)}",
                  file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    failed: list[str] = []
    for name in names:
        print(f"== bench.{name}", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            sys.argv = [f"bench.{name}"]  # each benchmark runs with its own defaults
            rc = module.main()
            if rc not in (None, 0):
                failed.append(name)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"== bench.{name}: {time.perf_counter() - t0:.1f}s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
