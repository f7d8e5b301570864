"""Batch scoring jobs: streamed sources, a pipelined local engine or Ray, Parquet, resume.

`run_job(runtime, source, out, JobOptions(...))` is the one entry point; the CLI wires it.
"""

from __future__ import annotations

from pipeline.batch.engine import JobOptions, JobResult, run_job

__all__ = ["JobOptions", "JobResult", "run_job"]
