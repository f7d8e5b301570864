"""Micro-batching for the API: concurrent classify requests share model calls and
transactions.

Each request is decoded on a thread pool as soon as its body has arrived (Pillow releases the
GIL), so decoding overlaps the model working on earlier requests.  Decoded images wait in one
queue; the model thread takes up to `max_batch` of them at a time.  It waits up to `max_wait`
for company only while other admitted requests are still decoding, so a lone request at low
load is never held back.  Admission is bounded: past `queue_limit` requests in flight, new ones
are shed with `Overloaded` (503 + Retry-After) instead of queueing without limit.

Requests leaving the model are gathered the same way into their recording: one thread takes
every request that is waiting and records them all in one transaction
(`Orchestrator.decide_many`: bank lookups, policy, one durable write of the blobs, then the
decisions with their audit events and outbox messages).  Under load that is one transaction per
model batch instead of three per request; a lone request is recorded at once.  The lookup that
comes first (was this upload decided before?) is gathered the same way
(`pipeline.scoring.answers_from_store`).

The steps before and after the model (lookup of a stored decision, policy, blob store, review
record) are the Orchestrator's, and its policy step is `pipeline.routing.route`, which batch
jobs call too: the API, the CLI and batch jobs decide in exactly the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from models.base import RGBImage, ScoreResult
from pipeline.errors import ErrorKind, PipelineError, UploadContextConflict
from pipeline.ingest import IngestedImage, declared_size, ingest_bytes, sniff, with_pdq
from pipeline.metrics import ApiMetrics
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.scoring import (
    Orchestrator,
    Scored,
    ToDecide,
    UploadRequest,
    answers_from_store,
)

__all__ = ["ClassifyInput", "ClassifyService", "MicroBatcher", "Overloaded"]

log = logging.getLogger(__name__)


#: most uploads recorded in one transaction (a model batch or two under load)
RECORD_BATCH = 64


class Overloaded(PipelineError):
    """The service is at capacity; retry after the number of seconds in Retry-After."""

    code = "overloaded"
    kind = ErrorKind.UNAVAILABLE

    def __init__(self, retry_after_s: float = 1.0, detail: str | None = None) -> None:
        self.retry_after = max(1, math.ceil(retry_after_s))
        super().__init__(detail)


T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float


class MicroBatcher(Generic[T, R]):
    """Coalesces items from concurrent coroutines into calls of `score` on one thread of its
    own: images into model calls, scored uploads into recording transactions."""

    def __init__(
        self,
        score: Callable[[Sequence[T]], list[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        arriving: Callable[[], int] = lambda: 0,
        metrics: ApiMetrics | None = None,
        thread_name: str = "model",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_s >= 0")
        self._score = score
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        #: how many requests will reach the queue soon (still decoding): worth waiting for
        self._arriving = arriving
        self._metrics = metrics
        self._pending: deque[_Job[T, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.batches = 0

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(Overloaded(detail="the server is shutting down"))
        self.executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue one item (a decoded image); the future resolves to its result (its scores)."""
        if self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._pending) >= self.max_queue:
            raise Overloaded(self._retry_after())
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(item, fut, time.perf_counter()))
        self._set_depth()
        self._wakeup.set()
        return fut

    def _retry_after(self) -> float:
        # a queue's worth of batches at the last batch's pace, at least a second
        return max(1.0, len(self._pending) / max(self.max_batch, 1) * 0.05)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.model_queue_depth.set(len(self._pending))

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._pending) < self.max_batch and self._arriving() > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            n = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            self._set_depth()
            batch = [j for j in batch if not j.future.done()]  # the caller went away
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self.executor, self._score, [j.item for j in batch]
                )
            except Exception as exc:  # the model failed: every request of the batch hears it
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches += 1
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(batch))
                self._metrics.batch_seconds.observe(time.perf_counter() - started)
                for j in batch:
                    self._metrics.batch_wait_seconds.observe(started - j.queued_at)
            for j, r in zip(batch, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)


class _Budget:
    """Bytes of decoded pixels held between decode and decision.  One image larger than the
    whole budget still passes when nothing else is held, so nothing waits forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self, n: int) -> None:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        cond = self._condition()
        async with cond:
            self.used -= n
            cond.notify_all()


@dataclass(frozen=True, slots=True)
class ClassifyInput:
    account_id: str
    upload_id: str
    context: Context
    data: bytes


class ClassifyService:
    """The API's path from upload bytes to a recorded decision, micro-batched.

    Exactly once per (account, upload id): a stored decision is returned without scoring, and
    concurrent requests for the same upload in this process share one piece of work (across
    processes, the database's unique constraint decides and the loser returns the winner's
    decision)."""

    def __init__(
        self,
        rt: Runtime,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_limit: int,
        decode_workers: int = 0,
        decoded_budget_bytes: int = 256 << 20,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.rt = rt
        self.metrics = metrics
        self.queue_limit = queue_limit
        workers = decode_workers or min(4, os.cpu_count() or 1)
        self.orch = Orchestrator(rt, decode_workers=workers)
        # A decode slot is held until the decoded image fits the budget, so the pixels that
        # exist at any time are bounded: the budget, plus one image per decode slot.
        self._decode_slots = asyncio.Semaphore(workers)
        self._budget = _Budget(decoded_budget_bytes)
        self.batcher = MicroBatcher(
            self._score_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_queue=queue_limit,
            arriving=lambda: self._decoding,
            metrics=metrics,
        )
        # The lookups of a stored decision that arrive together share one transaction too.
        self.lookup: MicroBatcher[UploadRequest, Scored | UploadContextConflict | None] = (
            MicroBatcher(functools.partial(answers_from_store, rt), max_batch=RECORD_BATCH,
                         max_wait_s=0, max_queue=max(queue_limit, 1), thread_name="lookup"))
        # Everything that left the model and waits for its record goes in the next
        # transaction: no waiting for company (max_wait 0), bounded by admission already.
        self.recorder: MicroBatcher[ToDecide, BaseException | None] = MicroBatcher(
            self._record_batch,
            max_batch=RECORD_BATCH,
            max_wait_s=0,
            max_queue=max(queue_limit, 1),
            thread_name="record",
        )
        self._inflight = 0
        self._decoding = 0
        self._work: dict[tuple[str, str], asyncio.Task[Scored]] = {}
        self.model_error: Exception | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self, *, preload_model: bool) -> None:
        self.batcher.start()
        self.recorder.start()
        self.lookup.start()
        if preload_model:
            asyncio.get_running_loop().create_task(self._preload(), name="model-preload")

    async def _preload(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.batcher.executor, self._load)
        except Exception as exc:  # readiness reports it; classify retries the load
            self.model_error = exc
            log.error("model failed to load", extra={"error": getattr(exc, "code", "")})
        try:  # the bank index too: the first classify should not wait for a large bank
            # on the loop's default pool: the model's executor stays free for requests
            await asyncio.get_running_loop().run_in_executor(None, self._load_banks)
        except Exception as exc:  # the first lookup tries again
            log.error("bank index failed to load", extra={"error": getattr(exc, "code", "")})

    def _load_banks(self) -> None:
        with self.rt.db.transaction() as s:
            self.rt.banks.refresh(s)

    def _load(self) -> None:
        scorer = self.rt.scorer
        if self.metrics is not None:
            self.metrics.model_loaded.labels(model_version=scorer.version).set(1)

    async def stop(self) -> None:
        for task in list(self._work.values()):
            task.cancel()
        await self.batcher.stop()
        await self.recorder.stop()  # waits for a transaction under way to end
        await self.lookup.stop()
        self.orch.close()

    # ---- admission ----------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self._inflight

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `queue_limit` places for the length of a request, or shed it now."""
        if self._inflight >= self.queue_limit:
            if self.metrics is not None:
                self.metrics.shed.labels(reason="overloaded").inc()
            raise Overloaded(max(1.0, self._inflight / 50))
        self._inflight += 1
        if self.metrics is not None:
            self.metrics.classify_inflight.set(self._inflight)
        try:
            yield
        finally:
            self._inflight -= 1
            if self.metrics is not None:
                self.metrics.classify_inflight.set(self._inflight)

    # ---- the work -------------------------------------------------------------------------------
    async def classify(self, inp: ClassifyInput) -> Scored:
        key = (inp.account_id, inp.upload_id)
        task = self._work.get(key)
        if task is None:
            # A task of its own: a client that disconnects does not cancel an upload that was
            # accepted, and a second request for the same upload waits for the same result.
            task = asyncio.get_running_loop().create_task(self._classify(inp))
            self._work[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        return await asyncio.shield(task)

    def _finished(self, key: tuple[str, str], task: asyncio.Task[Scored]) -> None:
        if self._work.get(key) is task:
            del self._work[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged twice

    async def _classify(self, inp: ClassifyInput) -> Scored:
        loop = asyncio.get_running_loop()
        req = UploadRequest(
            account_id=inp.account_id,
            external_id=inp.upload_id,
            context=inp.context,
            source="api",
            data=inp.data,
        )
        stored = await self.lookup.submit(req)
        if isinstance(stored, UploadContextConflict):
            raise stored
        if stored is not None:
            return stored
        settings = self.rt.settings
        async with self._decode_slots:
            held = _decode_peak_bytes(inp.data)
            await self._budget.acquire(held)
            self._decoding += 1
            started = time.perf_counter()
            try:
                image: IngestedImage = await loop.run_in_executor(
                    self.orch.pool,
                    lambda: with_pdq(ingest_bytes(inp.data,
                                                  max_bytes=settings.max_upload_bytes,
                                                  max_pixels=settings.max_pixels)),
                )
            except BaseException:
                await self._budget.release(held)
                raise
            finally:
                self._decoding -= 1
                if self.metrics is not None:
                    self.metrics.decode_seconds.observe(time.perf_counter() - started)
            # from the decode's peak down to the array that waits for the model
            kept = image.pixels.nbytes
            if kept < held:
                await self._budget.release(held - kept)
            elif kept > held:
                await self._budget.acquire(kept - held)
            held = kept
        try:
            result = await self.batcher.submit(image.pixels)
            scored = Scored(request=req, sha256=image.sha256)
            started = time.perf_counter()
            error = await self.recorder.submit(ToDecide(scored, image, inp.data, result))
            if self.metrics is not None:
                self.metrics.record_seconds.observe(time.perf_counter() - started)
            if error is not None:  # this upload's own: a context conflict, refused scores
                raise error
        finally:
            await self._budget.release(held)
        recorded = scored.recorded
        if self.metrics is not None and recorded is not None and recorded.created:
            self.metrics.observe_decision(
                outcome=recorded.outcome,
                context=inp.context.model_dump(),
                categories=list(scored.reasons.get("categories", [])),
            )
        return scored

    def _record_batch(self, items: Sequence[ToDecide]) -> list[BaseException | None]:
        if self.metrics is not None:
            self.metrics.record_batch_size.observe(len(items))
        return self.orch.decide_many(items)

    def _score_batch(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        results = self.rt.scorer.score(images)
        if self.metrics is not None:
            self.metrics.model_loaded.labels(model_version=self.rt.scorer.version).set(1)
        return results


def _decode_peak_bytes(data: bytes) -> int:
    """What decoding `data` may hold at its peak, from the dimensions its header declares:
    Pillow's image (up to 4 bytes a pixel, plus a 1-byte source for grey) and our RGB array
    (3).  0 when the header cannot be read: ingest refuses such a file before it allocates."""
    try:
        width, height = declared_size(data, sniff(data))
    except Exception:
        return 0
    return width * height * 8
