"""How a batch job runs (`JobOptions`, `plan_job`) and the local engine's worker processes
(`LocalWorkers`).  Kept apart from the engine so that `lookfirst batch` can start its workers
before it imports the rest (Parquet, fsspec) and opens the database: their own imports and
model loads then overlap its start."""

from __future__ import annotations

import contextlib
import importlib.machinery
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.batch.predictor import PredictorSpec, worker_init
from pipeline.errors import DependencyUnavailable
from pipeline.policy import Policy
from pipeline.runtime import choose_variant
from pipeline.settings import Settings

__all__ = ["JobOptions", "JobPlan", "LocalWorkers", "plan_job", "predictor_spec"]


@dataclass(frozen=True)
class JobOptions:
    """How to run a job; None takes the settings' default (LOOKFIRST_BATCH_*)."""

    engine: Literal["local", "ray"] = "local"
    #: worker processes (local) or actors (Ray); 0: one per core
    workers: int | None = None
    #: images per model call, and decisions per transaction
    batch_size: int | None = None
    #: batches out per worker at a time (the bound between dispatch and recording)
    in_flight: int = 2
    #: auto (the fastest variant whose measured agreement passes the bar), fp32, ov-bf16,
    #: int8-mixed; ignored when the runtime's scorer is not NudeNet
    model: str | None = None
    resume: bool = False
    part_rows: int | None = None
    part_seconds: float = 30.0
    progress: bool | None = None
    #: measure a never-measured variant before choosing (else: fp32 until it is measured)
    measure_model: bool = True
    #: append each ordinal sent to the model to this file (tests check exactly-once with it)
    trace: Path | None = None
    ray_address: str | None = None
    #: rows per Ray dataset (the driver streams the source in windows of this size)
    ray_window: int = 10_000


def predictor_spec(settings: Settings, model: str, *, threads: int) -> PredictorSpec:
    return PredictorSpec(model=model, model_root=str(settings.data_dir / "models"),
                         threads=threads, max_bytes=settings.max_upload_bytes,
                         max_pixels=settings.max_pixels, blob_dir=str(settings.blob_dir))


@dataclass(frozen=True)
class JobPlan:
    """What a job runs: the model (a variant chosen by measured agreement), how many workers
    and what each of them loads."""

    model: str
    workers: int
    spec: PredictorSpec


def plan_job(settings: Settings, policy: Policy, options: JobOptions) -> JobPlan:
    """The model and the workers of a job (measuring a never-measured variant first when
    `options.measure_model`); needs no database, so workers can start before it is open."""
    workers = (options.workers if options.workers is not None
               else settings.batch_workers) or max(1, os.cpu_count() or 1)
    model = choose_variant(settings, policy, options.model or settings.model_variant,
                           measure=options.measure_model)
    threads = 1 if workers > 1 else max(1, os.cpu_count() or 1)
    return JobPlan(model, workers, predictor_spec(settings, model, threads=threads))


class LocalWorkers:
    """The local engine's worker processes, each loading the model once.  They may be started
    ahead of the job: `lookfirst batch` starts them before it opens the database, so that
    their imports and model loads overlap its own start."""

    #: worker pools one run may replace after a worker died, before the job stops: more
    #: than a few poison files in one run is the machine's trouble, not the files'
    MAX_RESTARTS = 8

    def __init__(self, plan: JobPlan) -> None:
        self.plan = plan
        #: which pool a future came from: a future of a replaced pool is re-run, not a reason
        #: to replace the new one
        self.generation = 0
        self.restarts = 0
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("spawn")  # no forked copies of the parent's DB pool or threads
        pool = ProcessPoolExecutor(max_workers=self.plan.workers, mp_context=ctx,
                                   initializer=worker_init, initargs=(self.plan.spec,))
        _start_workers(pool, self.plan.workers)
        return pool

    def restart(self) -> None:
        """Replace a pool a dead worker broke (every future it held fails), and wait until
        the new workers run; a pool that cannot start (the model fails to load, memory), or
        one replaced too often in this run, stops the job."""
        self.restarts += 1
        if self.restarts > self.MAX_RESTARTS:
            raise DependencyUnavailable(
                f"batch workers died {self.restarts} times in this run (memory, or a machine "
                "fault): stopped; what was recorded is committed")
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._start()
        self.generation += 1
        try:
            for probe in [self.pool.submit(int) for _ in range(self.plan.workers)]:
                probe.result()
        except BrokenProcessPool as exc:
            raise DependencyUnavailable(
                "batch workers cannot start (the model failed to load, or memory)") from exc

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_workers(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start every worker now, with Ctrl-C ignored while they start: a worker inherits that,
    so Ctrl-C reaches only this process, which commits what is recorded and shuts the pool
    down (a worker hit while importing would print its own traceback instead)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread; the pool starts as it is used
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _workers_skip_main():
            for _ in range(workers):  # each submit finds no idle worker and starts one
                pool.submit(int)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _workers_skip_main() -> Iterator[None]:
    """A spawned process first runs its parent's `__main__` again, unless that was run as a
    package's `__main__`.  The `lookfirst` script's imports are the whole CLI (measured: a
    second or two of each worker's start on two cores, before its first image); a worker
    needs none of it (what it runs is imported by name from `pipeline.batch.predictor`)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = getattr(main, "__spec__", None)
    main.__spec__ = importlib.machinery.ModuleSpec("pipeline.batch.__main__", None)
    try:
        yield
    finally:
        main.__spec__ = saved
