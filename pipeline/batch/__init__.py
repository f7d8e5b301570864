"""Batch scoring jobs: streamed sources, a pipelined local engine or Ray, Parquet, resume.

`run_job(runtime, source, out, JobOptions(...))` is the one entry point; `lookfirst batch`
wires it.  The names are loaded on first use, so that a worker process, which imports only
`pipeline.batch.predictor`, does not pay for the engine's imports (the database, the policy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.batch.engine import JobOptions, JobResult, run_job

__all__ = ["JobOptions", "JobResult", "run_job"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.batch import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
