"""The batch job: a source in, decisions recorded and Parquet parts out; local or on Ray.

The local engine is a pipeline with bounded stages.  The main process streams the source,
drops rows a committed part already holds, asks the database which uploads are already
decided (those never reach the model), and hands each batch to a pool of worker processes
(read, safe decode, blob store, model: `Predictor`).  At most `in_flight` batches per worker
are out at a time, so memory is bounded and the workers are never idle while the main
process records the oldest finished batch (one transaction per batch) and appends its rows
to the current Parquet part.  On two cores, two data-parallel workers with one model thread
each beat one decode thread feeding a two-thread model (ENVIRONMENT.md), hence one
process per core by default.  A worker that dies (a native decoder's crash on a hostile file,
the OOM killer) breaks the pool: it is replaced, and the batches it held are run again, alone
and then row by row, so that the one row that kills a worker is that row's error
(`image.worker_crashed`) and the job goes on.
"""

from __future__ import annotations

import itertools
import logging
import resource
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.batch.errors import (
    FILE_UNAVAILABLE,
    WORKER_CRASHED,
    SchemeUnavailable,
    UnknownEngine,
)
from pipeline.batch.output import (
    PartWriter,
    import_pandas_meanwhile,
    summarize,
    write_summary,
)
from pipeline.batch.predictor import Prediction, rows_to_batch, worker_predict
from pipeline.batch.progress import JobProgress
from pipeline.batch.recorder import BatchRecorder, error_row
from pipeline.batch.resume import JobDir
from pipeline.batch.sources import Source, SourceRow, open_source
from pipeline.batch.workers import JobOptions, JobPlan, LocalWorkers, plan_job
from pipeline.runtime import Runtime

__all__ = ["JobOptions", "JobPlan", "JobResult", "LocalWorkers", "plan_job", "run_job"]

logger = logging.getLogger(__name__)

#: rows whose files could not be read for now that a job's summary names
_UNFINISHED_SHOWN = 5

@dataclass
class JobResult:
    out: Path
    model_version: str
    summary: dict[str, Any]
    run: int
    #: this run's rows: skipped (already in a part), answered from the store, sent to the model
    counters: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _pending_batches(source: Source, job: JobDir, size: int) -> Iterator[list[SourceRow]]:
    """The source's rows that no committed part holds, in batches."""
    rows = source.rows()
    while True:
        chunk = list(itertools.islice(rows, size))
        if not chunk:
            return
        done = job.is_done(np.fromiter((r.ordinal for r in chunk), dtype=np.int64,
                                       count=len(chunk)))
        todo = [r for r, d in zip(chunk, done, strict=True) if not d]
        yield todo if todo else []


class _Trace:
    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = open(path, "a") if path else None  # noqa: SIM115

    def sent(self, rows: Sequence[SourceRow]) -> None:
        if self._fh is not None and rows:
            self._fh.write("".join(f"{r.ordinal}\n" for r in rows))
            self._fh.flush()  # to the kernel: a kill -9 of this process does not lose it

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


@dataclass
class _Batch:
    rows: list[SourceRow]
    stored: dict[int, dict[str, Any]]
    to_model: list[SourceRow]
    future: Future[dict[str, Any]] | None = None


class _Job:
    """What both engines share: dispatch bookkeeping, recording and output."""

    def __init__(self, rt: Runtime, source: Source, job: JobDir, options: JobOptions) -> None:
        self.rt = rt
        self.source = source
        self.job = job
        self.options = options
        settings = rt.settings
        #: images per model call and decisions per transaction
        self.batch_size: int = options.batch_size or settings.batch_job_size
        self.recorder = BatchRecorder(rt)
        self.writer = PartWriter(job.out, part_rows=options.part_rows or settings.batch_part_rows,
                                 part_seconds=options.part_seconds)
        self.trace = _Trace(options.trace)
        self.counters = {"skipped": 0, "from_store": 0, "to_model": 0, "errors": 0,
                         "recorded": 0, "unfinished": 0}
        #: the first few rows whose files could not be read for now (for the message)
        self.unfinished: list[str] = []

    def prepare(self, rows: list[SourceRow]) -> _Batch:
        stored = self.recorder.stored(rows)
        to_model = [r for r in rows if r.ok and r.ordinal not in stored]
        self.trace.sent(to_model)
        self.counters["from_store"] += len(stored)
        self.counters["to_model"] += len(to_model)
        return _Batch(rows, stored, to_model)

    def finish(self, batch: _Batch, predictions: Sequence[Prediction]) -> int:
        by_ordinal = {p.ordinal: p for p in predictions}
        # a file that could not be read for now is no result: no row, and a resume retries it
        later = {p.ordinal for p in predictions if p.error_code == FILE_UNAVAILABLE}
        if later:
            self.counters["unfinished"] += len(later)
            self.counters["to_model"] -= len(later)  # sent, but never read: not scored
            for row in batch.to_model:
                if row.ordinal in later and len(self.unfinished) < _UNFINISHED_SHOWN:
                    self.unfinished.append(row.label)
        results: list[dict[str, Any]] = list(batch.stored.values())
        for row in batch.rows:
            if not row.ok:
                results.append(error_row(row, row.error_code or "row.invalid", row.error_detail))
        results.extend(self.recorder.record(
            [r for r in batch.to_model if r.ordinal not in later], by_ordinal))
        results.sort(key=lambda r: int(r["ordinal"]))
        self.counters["errors"] += sum(1 for r in results if r["error_code"] is not None)
        self.counters["recorded"] += sum(1 for r in results if r.get("decision_id")
                                         and not r.get("already_scored"))
        self.writer.add(results)
        return len(results)

    def close(self) -> None:
        try:
            self.writer.commit()  # every row recorded so far: its decision is committed
        finally:
            self.trace.close()
            self.recorder.close()


def _submit(workers: LocalWorkers, rows: Sequence[SourceRow]) -> Future[dict[str, Any]]:
    return workers.pool.submit(worker_predict, rows_to_batch(
        [r.ordinal for r in rows], [r.location or "" for r in rows]))


def _predict_alone(workers: LocalWorkers, rows: Sequence[SourceRow]) -> list[Prediction]:
    return Prediction.from_batch(_submit(workers, rows).result())


def _crashed(row: SourceRow) -> Prediction:
    return Prediction(ordinal=row.ordinal, sha256=None, mime=None, width=0, height=0,
                      size_bytes=0, model_version=None, scores={}, evidence=[], shadow=[],
                      error_code=WORKER_CRASHED, error_detail=(
                          "processing this file ended its worker process, twice, the second "
                          "time alone (a crash in a native decoder, or the memory limit)"))


def _rerun(workers: LocalWorkers, batch: _Batch) -> list[Prediction]:
    """A batch whose worker died (a crash in a native decoder on a hostile file, the kernel's
    OOM killer), run again on the replaced pool: whole and alone first (it may only have
    shared the dead worker's pool), then, if it kills a worker again, each row alone.  A row
    that kills its worker alone is its row's error (image.worker_crashed): one poison file
    never stops a job, nor every resume of it."""
    try:
        return _predict_alone(workers, batch.to_model)
    except BrokenProcessPool:
        workers.restart()
    out: list[Prediction] = []
    for row in batch.to_model:
        try:
            out.extend(_predict_alone(workers, [row]))
        except BrokenProcessPool:
            logger.warning("a file ended its worker process: its row's error",
                           extra={"ordinal": row.ordinal, "input": row.label})
            workers.restart()
            out.append(_crashed(row))
    return out


def _run_local(job: _Job, workers: LocalWorkers, progress: JobProgress) -> None:
    pending: deque[tuple[_Batch, int]] = deque()  # with the pool generation it went to
    limit = max(1, workers.plan.workers * job.options.in_flight)

    def complete(batch: _Batch, generation: int) -> None:
        predictions: list[Prediction] = []
        if batch.future is not None:
            try:
                predictions = Prediction.from_batch(batch.future.result())
            except BrokenProcessPool:
                if generation == workers.generation:  # else: already replaced
                    logger.warning("a batch worker died; replacing the workers")
                    workers.restart()
                predictions = _rerun(workers, batch)
        progress.advance(job.finish(batch, predictions))

    stopped: SchemeUnavailable | None = None
    batches = _pending_batches(job.source, job.job, job.batch_size)
    try:
        while True:
            try:
                rows = next(batches, None)
            except SchemeUnavailable as exc:
                stopped = exc  # what is out with the workers is still recorded first
                break
            if rows is None:
                break
            if not rows:
                continue
            batch = job.prepare(rows)
            if batch.to_model:
                batch.future = _submit(workers, batch.to_model)
            pending.append((batch, workers.generation))
            # record the oldest batch once it is ready, or when the window is full
            while pending and (len(pending) > limit or pending[0][0].future is None
                               or pending[0][0].future.done()):
                complete(*pending.popleft())
        while pending:
            complete(*pending.popleft())
        if stopped is not None:
            raise stopped
    finally:
        for batch, _ in pending:  # stopped early: what is still queued will not be recorded
            if batch.future is not None:
                batch.future.cancel()


def run_job(rt: Runtime, source_spec: str, out: Path, options: JobOptions, *,
            workers: LocalWorkers | None = None) -> JobResult:
    """Run (or resume) one batch job to the end; returns its summary.

    Interrupted (KeyboardInterrupt, or any error), it commits the output rows of every
    decision recorded so far and re-raises: the same job with `resume` goes on from there.
    `workers`: the local engine's processes, started by the caller (who closes them);
    otherwise the job starts its own.  The local engine spawns processes: a script that calls
    this must do so under `if __name__ == "__main__":` (as every spawn-based multiprocessing
    program must)."""
    started = time.monotonic()
    if options.engine not in ("local", "ray"):
        raise UnknownEngine(f"unknown engine {options.engine!r}: local or ray")
    import_pandas_meanwhile()
    source = open_source(source_spec)
    job_dir = JobDir(out, source.fingerprint(), resume=options.resume)
    try:
        plan = workers.plan if workers is not None else plan_job(rt.settings, rt.policy,
                                                                 options)
        model = plan.model
        total = source.count()
        job = _Job(rt, source, job_dir, options)
        already = int(job_dir.done.size)
        job.counters["skipped"] = already
        model_version = ""
        try:
            with JobProgress(total, done=already, enabled=options.progress) as progress:
                if options.engine == "ray":
                    from pipeline.batch.ray_engine import run_ray

                    run_ray(job, plan.spec, plan.workers, progress)
                elif workers is not None:
                    _run_local(job, workers, progress)
                else:
                    with LocalWorkers(plan) as own:
                        _run_local(job, own, progress)
        finally:
            job.close()
        summary = summarize(out)
        versions = summary.get("model_versions", {})
        model_version = max(versions, key=versions.get) if versions else model
        summary.update({"source": source.spec, "model": model,
                        "policy_version": rt.policy.version, "runs": job_dir.runs,
                        "last_run": {**job.counters,
                                     "seconds": round(time.monotonic() - started, 2),
                                     # this process only (Linux reports KiB): flat = streamed
                                     "peak_rss_mib": round(resource.getrusage(
                                         resource.RUSAGE_SELF).ru_maxrss / 1024)}})
        if job.unfinished:
            summary["last_run"]["unfinished_examples"] = job.unfinished
        write_summary(out, summary)
        return JobResult(out=out, model_version=model_version, summary=summary,
                         run=job_dir.runs, counters=dict(job.counters),
                         elapsed_s=time.monotonic() - started)
    finally:
        job_dir.close()

