"""The scoring orchestrator: bytes in, decisions out, for `lookfirst score` and the API.

ingest (decode on a thread pool) -> model -> content-addressed blobs -> hash banks and policy
(`pipeline.routing.route`) -> one transaction per batch of uploads in the review store
(`decide_many`; the API's requests are gathered into such batches as they leave the model).
An upload already scored is never scored again: its stored decision is returned (invariant 4:
exactly once, one outcome; `answers_from_store`).  Batch jobs (`pipeline.batch`) record through
this module's `record_scored` too, from their own workers' predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from models.base import ScoreResult
from pipeline.banks import Query
from pipeline.errors import (
    ImageTooLarge,
    InputNotFound,
    PipelineError,
    UploadContextConflict,
)
from pipeline.hashing.pdq import DihedralPdq
from pipeline.ingest import IngestedImage, ingest_bytes, with_pdq
from pipeline.policy import Context
from pipeline.routing import route
from pipeline.runtime import Runtime
from review import (
    DecisionRecord,
    NewUpload,
    Recorded,
    Routing,
    get_decisions,
)

log = logging.getLogger(__name__)

#: tries at recording a batch that raced another writer (each retry finds the winner's rows)
_ATTEMPTS = 3


@dataclass(frozen=True)
class UploadRequest:
    account_id: str
    external_id: str
    context: Context
    source: str = "cli"
    data: bytes | None = None
    path: Path | None = None
    #: what to call it in output (a file name); never the content
    label: str = ""


@dataclass
class Scored:
    request: UploadRequest
    error: PipelineError | None = None
    sha256: str | None = None
    recorded: Recorded | None = None
    scores: dict[str, float] = field(default_factory=dict)
    model_version: str | None = None
    policy_version: str | None = None
    reasons: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def fill_from_store(self, found: Recorded, d: DecisionRecord) -> None:
        """This upload was decided before: answer with what was decided then, when it was
        asked with the same context (`UploadContextConflict` when not: the first decision
        stands, and a new context is a new upload)."""
        check_same_context(self.request, d.context)
        self.recorded = found
        self.sha256 = d.reasons.get("content_sha256")
        self.scores = dict(d.scores)
        self.model_version = d.model_version
        self.policy_version = d.policy_version
        self.reasons = dict(d.reasons)

    def as_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "input": self.request.label or self.request.external_id,
            "account_id": self.request.account_id,
            "upload_id": self.request.external_id,
        }
        if self.error is not None:
            return {**base, "error": {"code": self.error.code, "detail": self.error.detail}}
        assert self.recorded is not None
        return {
            **base,
            "content_id": self.sha256,
            "sha256": self.sha256,
            "decision_id": self.recorded.decision_id,
            "model_version": self.model_version,
            "policy_version": self.policy_version,
            "scores": self.scores,
            "outcome": self.recorded.outcome,
            "queue": self.recorded.queue,
            "review_item_id": self.recorded.item_id,
            "already_scored": not self.recorded.created,
            "reasons": self.reasons,
        }


def _pairs(ctx: dict[str, Any]) -> str:
    def text(v: Any) -> str:
        return "unset" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return ", ".join(f"{k}={text(v)}" for k, v in sorted(ctx.items()))


def check_same_context(req: UploadRequest, stored: Mapping[str, Any]) -> None:
    """Refuse a repeated upload id whose context differs from the one it was scored with."""
    given = req.context.model_dump(mode="json")
    before = {**Context().model_dump(mode="json"), **dict(stored)}
    if given == before:
        return
    changed = sorted(k for k in given.keys() | before.keys() if given.get(k) != before.get(k))
    raise UploadContextConflict(
        f"upload {req.external_id!r} of account {req.account_id!r} was scored before with "
        f"context {_pairs(before)}; this request says "
        f"{_pairs({k: given.get(k) for k in changed})}.  An upload is decided once, with the "
        f"context it was first scored with.  To score the image with this context, score it "
        f"as a new upload with a new upload id (CLI: --upload-id NEW-ID; API: the upload_id "
        f"field)")


def _read(req: UploadRequest, max_bytes: int) -> bytes:
    if req.data is not None:
        return req.data
    assert req.path is not None
    try:
        with open(req.path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # never read a huge file whole
    except FileNotFoundError:
        raise InputNotFound(f"no such file: {req.path}") from None
    except IsADirectoryError:
        raise InputNotFound(f"is a directory, not an image file: {req.path}") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the file is larger than {max_bytes} bytes")
    return data


def _prepare(rt: Runtime, req: UploadRequest) -> tuple[IngestedImage, bytes] | PipelineError:
    try:
        data = _read(req, rt.settings.max_upload_bytes)
        image = with_pdq(ingest_bytes(
            data, max_bytes=rt.settings.max_upload_bytes, max_pixels=rt.settings.max_pixels
        ))
        return image, data
    except PipelineError as exc:
        return exc


class Orchestrator:
    """Scores uploads a batch at a time: decoding on a thread pool (Pillow releases the GIL),
    one model call per batch, one transaction per batch of recorded decisions."""

    def __init__(self, rt: Runtime, *, decode_workers: int = 2) -> None:
        self.rt = rt
        self.pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def score(self, requests: Sequence[UploadRequest]) -> list[Scored]:
        """Score `requests` in order, `settings.batch_size` per model call."""
        size = self.rt.settings.batch_size
        out: list[Scored] = []
        for i in range(0, len(requests), size):
            out += self._score_batch(requests[i : i + size])
        return out

    def _score_batch(self, batch: Sequence[UploadRequest]) -> list[Scored]:
        rt = self.rt
        results: list[Scored] = []
        decoding = []
        for req, answer in zip(batch, answers_from_store(rt, batch), strict=True):
            if isinstance(answer, Scored):  # scored before: what was decided, not rescored
                results.append(answer)
            elif isinstance(answer, UploadContextConflict):
                results.append(Scored(request=req, error=answer))
            else:
                scored = Scored(request=req)
                results.append(scored)
                decoding.append((scored, self.pool.submit(_prepare, rt, req)))
        to_score: list[tuple[Scored, IngestedImage, bytes]] = []
        for scored, fut in decoding:
            prepared = fut.result()
            if isinstance(prepared, PipelineError):
                scored.error = prepared
                continue
            image, data = prepared
            scored.sha256 = image.sha256
            to_score.append((scored, image, data))
        if to_score:
            model_results = rt.scorer.score([image.pixels for _, image, _ in to_score])
            items = [ToDecide(scored, image, data, result) for (scored, image, data), result
                     in zip(to_score, model_results, strict=True)]
            for item, error in zip(items, self.decide_many(items), strict=True):
                if isinstance(error, UploadContextConflict):  # a concurrent request won
                    item.scored.error = error
                elif error is not None:
                    raise error
        return results

    def decide_many(self, items: Sequence[ToDecide]) -> list[BaseException | None]:
        """The decisions of a batch of scored uploads (`record_scored`), after one durable
        write of their blobs: a decision never points at a missing blob."""
        if not items:
            return []
        self.rt.blobs.put_many([it.data for it in items])
        return record_scored(self.rt, [
            ToRecord(it.scored, _new_upload(it.scored.request, it.image), it.result,
                     it.image.pdq) for it in items])


def answers_from_store(rt: Runtime, requests: Sequence[UploadRequest]
                       ) -> list[Scored | UploadContextConflict | None]:
    """For each request, in one transaction: its stored decision when the upload was decided
    before (a `Scored` filled from the store; never scored again), `UploadContextConflict`
    when it was decided with another context, or None (new: to be scored)."""
    if not requests:
        return []
    with rt.db.transaction() as s:
        found = rt.review.find_uploads(s, [(r.account_id, r.external_id) for r in requests])
        stored = (get_decisions(s, decision_ids=[f.decision_id for f in found.values()])
                  if found else {})
    out: list[Scored | UploadContextConflict | None] = []
    for req in requests:
        hit = found.get((req.account_id, req.external_id))
        if hit is None:
            out.append(None)
            continue
        scored = Scored(request=req)
        try:
            scored.fill_from_store(hit, stored[hit.decision_id])
        except UploadContextConflict as exc:
            out.append(exc)
            continue
        out.append(scored)
    return out


@dataclass(frozen=True, slots=True)
class ToDecide:
    """A scored upload on its way to a decision: its request's `Scored`, the ingested image,
    the bytes (for the blob store) and the model's result."""

    scored: Scored
    image: IngestedImage
    data: bytes
    result: ScoreResult


@dataclass(frozen=True, slots=True)
class ToRecord:
    """What `record_scored` needs of one upload, however it arrived (the API, the CLI, a batch
    job's worker): the `Scored` to fill, the upload to store, the model's result, the PDQ
    hashes for the banks, and the shadow models' rows when they came apart from the result."""

    scored: Scored
    upload: NewUpload
    result: ScoreResult
    pdq: DihedralPdq | None
    shadow: Sequence[Mapping[str, Any]] | None = None


def record_scored(rt: Runtime, items: Sequence[ToRecord]) -> list[BaseException | None]:
    """Bank lookups, policy and the record of a batch of scored uploads in ONE transaction
    (`record_many`: every decision with its audit events, outbox message and review item; a
    crash leaves all of the batch or none).  The API, `lookfirst score` and batch jobs all
    record through here.

    Returns, per item, None when its `scored` was filled (a new decision, or the stored one
    when another request, row or process recorded the upload first), or the error that
    belongs to that upload alone: the policy refusing its scores (ValueError or a
    PipelineError), or `UploadContextConflict`.  A failure of the database raises for all; a
    race with another writer ends in the unique constraints and the batch is retried whole
    (the retry finds the winner's rows and answers with its decisions)."""
    if not items:
        return []
    for attempt in range(_ATTEMPTS):
        try:
            return _record_once(rt, items)
        except IntegrityError:
            if attempt == _ATTEMPTS - 1:
                raise
            log.info("recording raced another writer; retrying", extra={"uploads": len(items)})
    raise AssertionError("unreachable")  # pragma: no cover


def _record_once(rt: Runtime, items: Sequence[ToRecord]) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * len(items)
    with rt.db.transaction() as s:
        hits = rt.banks.match_many(
            s, [Query(sha256=it.upload.sha256, account_id=it.upload.account_id, pdq=it.pdq)
                for it in items], at=rt.review.clock())
        entries: list[tuple[int, Routing]] = []
        for i, (it, hit) in enumerate(zip(items, hits, strict=True)):
            try:
                routing = route(rt.policy, it.result, context=it.scored.request.context,
                                sha256=it.upload.sha256, bank_hit=hit, shadow=it.shadow)
            except (PipelineError, ValueError) as exc:
                errors[i] = exc
                continue
            entries.append((i, routing))
        recorded = rt.review.record_many(s, [(items[i].upload, r) for i, r in entries])
        again = [rec.decision_id for rec in recorded if not rec.created]
        stored = get_decisions(s, decision_ids=again) if again else {}
    for (i, routing), rec in zip(entries, recorded, strict=True):
        scored = items[i].scored
        if not rec.created:
            try:
                scored.fill_from_store(rec, stored[rec.decision_id])
            except UploadContextConflict as exc:
                errors[i] = exc
            continue
        scored.recorded = rec
        scored.sha256 = items[i].upload.sha256
        scored.scores = dict(routing.scores)
        scored.model_version = routing.model_version
        scored.policy_version = routing.policy_version
        scored.reasons = dict(routing.reasons)
        log.info("scored", extra={"decision_id": rec.decision_id, "outcome": rec.outcome,
                                  "model_version": routing.model_version})
    return errors


def _new_upload(req: UploadRequest, image: IngestedImage) -> NewUpload:
    return NewUpload(
        account_id=req.account_id,
        external_id=req.external_id,
        source=req.source,
        context=req.context.model_dump(),
        sha256=image.sha256,
        mime=image.mime,
        width=image.width,
        height=image.height,
        size_bytes=image.size_bytes,
        pdq=image.pdq.original.hex if image.pdq is not None else None,
        pdq_quality=image.pdq.quality if image.pdq is not None else None,
    )
