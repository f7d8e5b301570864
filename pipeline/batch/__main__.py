"""`python -m pipeline.batch SOURCE --out DIR [...]`: the batch job until `lookfirst batch`
is wired to it (phase 2); the benchmark and the kill -9 tests run it as a whole process."""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline.batch.engine import JobOptions, run_job  # noqa: E402
from pipeline.errors import ErrorKind, PipelineError  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.batch", description=__doc__)
    p.add_argument("source", help="folder, .jsonl/.csv/.parquet manifest, or fsspec URL")
    p.add_argument("--out", required=True, type=Path, help="output folder (Parquet parts)")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default="auto", help="auto, fp32, ov-bf16, int8-mixed")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--part-rows", type=int, default=2048)
    p.add_argument("--no-measure", action="store_true",
                   help="do not measure a variant never measured here (use fp32 instead)")
    p.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ray-address", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("pipeline.batch").setLevel(logging.INFO)
    options = JobOptions(engine=args.engine, workers=args.workers, batch_size=args.batch_size,
                         model=args.model, resume=args.resume, part_rows=args.part_rows,
                         measure_model=not args.no_measure, trace=args.trace,
                         ray_address=args.ray_address)
    rt = None
    try:
        rt = Runtime(Settings())
        rt.db.upgrade()  # idempotent, as `lookfirst` does
        result = run_job(rt, args.source, args.out, options)
    except PipelineError as exc:
        sys.stderr.write(json.dumps({"error": {"code": exc.code, "detail": exc.detail}}) + "\n")
        from pipeline.cli._common import EXIT_CODES

        return int(EXIT_CODES[ErrorKind(exc.kind)])
    finally:
        if rt is not None:
            rt.close()
    sys.stdout.write(json.dumps(result.summary, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
