"""The scoring orchestrator: bytes in, decisions out.

ingest (decode off the main thread) -> content-addressed blob -> batched model -> policy ->
one transaction per upload in the review store.  An upload already scored is never scored
again: its stored decision is returned (invariant 4: exactly once, one outcome).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from models.base import ScoreResult
from pipeline.errors import ImageTooLarge, PipelineError
from pipeline.evidence import evidence_rows, shadow_rows
from pipeline.ingest import IngestedImage, ingest_bytes
from pipeline.policy import Context, Policy
from pipeline.runtime import Runtime
from review import NewUpload, Recorded, Routing, bank_lookup, bank_lookup_many, get_decision

log = logging.getLogger(__name__)


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

    def took(self, recorded: Recorded, routing: Routing) -> None:
        """This upload's decision was recorded now, from `routing`."""
        self.recorded = recorded
        self.scores = dict(routing.scores)
        self.model_version = routing.model_version
        self.policy_version = routing.policy_version
        self.reasons = dict(routing.reasons)

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


def _read(req: UploadRequest, max_bytes: int) -> bytes:
    if req.data is not None:
        return req.data
    assert req.path is not None
    try:
        with open(req.path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # never read a huge file whole
    except FileNotFoundError:
        raise PipelineError(f"no such file: {req.path}") from None
    except IsADirectoryError:
        raise PipelineError(f"is a directory: {req.path}") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the file is larger than {max_bytes} bytes")
    return data


def _prepare(rt: Runtime, req: UploadRequest) -> tuple[IngestedImage, bytes] | PipelineError:
    try:
        data = _read(req, rt.settings.max_upload_bytes)
        image = ingest_bytes(
            data, max_bytes=rt.settings.max_upload_bytes, max_pixels=rt.settings.max_pixels
        )
        return image, data
    except PipelineError as exc:
        return exc


class Orchestrator:
    """Scores batches of uploads.  Decode runs on a thread pool (Pillow releases the GIL) and
    overlaps with the model working on the previous batch."""

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
        return list(self.iter_score(requests))

    def iter_score(
        self,
        requests: Iterable[UploadRequest],
        *,
        on_done: Callable[[Scored], None] | None = None,
    ) -> Iterator[Scored]:
        bs = self.rt.settings.batch_size
        chunk: list[UploadRequest] = []
        pending: list[tuple[UploadRequest, Future[tuple[IngestedImage, bytes] | PipelineError]]]
        pending = []

        def flush() -> Iterator[Scored]:
            nonlocal pending
            batch, pending = pending, []
            for scored in self._finish(batch):
                if on_done:
                    on_done(scored)
                yield scored

        for req in requests:
            chunk.append(req)
            if len(chunk) == bs:
                # submit the next batch's decode before running the model on the current one
                submitted = [(r, self.pool.submit(_prepare, self.rt, r)) for r in chunk]
                chunk = []
                if pending:
                    yield from flush()
                pending = submitted
        submitted = [(r, self.pool.submit(_prepare, self.rt, r)) for r in chunk]
        if pending:
            yield from flush()
        pending = submitted
        if pending:
            yield from flush()

    def _finish(
        self,
        batch: Sequence[tuple[UploadRequest, Future[tuple[IngestedImage, bytes] | PipelineError]]],
    ) -> list[Scored]:
        rt = self.rt
        results: list[Scored] = []
        to_score: list[tuple[Scored, IngestedImage, bytes]] = []
        for req, fut in batch:
            scored = Scored(request=req)
            results.append(scored)
            with rt.db.transaction() as s:
                found = rt.review.find_upload(
                    s, account_id=req.account_id, external_id=req.external_id
                )
                if found is not None:  # scored before: return what was decided, do not rescore
                    self.fill_from_store(s, scored, found)
                    fut.cancel()
                    continue
            prepared = fut.result()
            if isinstance(prepared, PipelineError):
                scored.error = prepared
                continue
            image, data = prepared
            scored.sha256 = image.sha256
            to_score.append((scored, image, data))
        if to_score:
            with rt.db.transaction() as s:
                matches = bank_lookup_many(s, [img.sha256 for _, img, _ in to_score])
            model_results = rt.scorer.score([img.pixels for _, img, _ in to_score])
            for (scored, image, data), result in zip(to_score, model_results, strict=True):
                self.decide(scored, image, data, result, matches.get(image.sha256))
        return results

    def bank_match(self, sha256: str) -> str | None:
        """The hash bank this content matches, if any (one request at a time: the API)."""
        with self.rt.db.transaction() as s:
            return bank_lookup(s, sha256)

    def fill_from_store(self, s: Any, scored: Scored, found: Recorded) -> None:
        d = get_decision(s, decision_id=found.decision_id)
        assert d is not None
        scored.recorded = found
        scored.sha256 = d.reasons.get("content_sha256")
        scored.scores = dict(d.scores)
        scored.model_version = d.model_version
        scored.policy_version = d.policy_version
        scored.reasons = dict(d.reasons)

    def decide(
        self,
        scored: Scored,
        image: IngestedImage,
        data: bytes,
        result: ScoreResult,
        bank_match: str | None = None,
    ) -> None:
        rt = self.rt
        req = scored.request
        routing = routing_for(rt.policy, req, sha256=image.sha256, scores=result.scores,
                              model_version=result.model_version,
                              evidence=evidence_rows(result), shadow=shadow_rows(result),
                              bank_match=bank_match)
        rt.blobs.put(data)  # before the record: a decision never points at a missing blob
        upload = new_upload(req, sha256=image.sha256, mime=image.mime, width=image.width,
                            height=image.height, size_bytes=image.size_bytes)
        recorded = None
        for attempt in range(3):
            try:
                with rt.db.transaction() as s:
                    recorded = rt.review.record(s, upload, routing)
                break
            except IntegrityError:
                # a concurrent request recorded the same upload (or content) first; the retry
                # finds it and returns the stored decision instead of a second one
                if attempt == 2:
                    raise
        assert recorded is not None
        if not recorded.created:
            with rt.db.transaction() as s:
                self.fill_from_store(s, scored, recorded)
            return
        scored.took(recorded, routing)
        log.info(
            "scored",
            extra={"decision_id": recorded.decision_id, "outcome": recorded.outcome,
                   "model_version": result.model_version},
        )


def routing_for(
    policy: Policy,
    req: UploadRequest,
    *,
    sha256: str,
    scores: Mapping[str, float],
    model_version: str,
    evidence: Sequence[Mapping[str, Any]],
    shadow: Sequence[Mapping[str, Any]],
    bank_match: str | None,
) -> Routing:
    """The policy's decision on one image as the review store records it, with the statement
    of reasons: the one builder behind the API's and the batch job's decisions (the tests
    compare the two paths row by row).  `evidence` and `shadow` are `pipeline.evidence` rows."""
    decision = policy.evaluate(scores, req.context, content_sha256=sha256,
                               bank_match=bank_match)
    reasons = {
        **decision.reasons,
        "content_sha256": sha256,
        "model_version": model_version,
        "evidence": [
            {"category": e["category"], "label": e["label"],
             "score": round(float(e["score"]), 4),
             "box": [round(float(v), 1) for v in e["box"]] if e["box"] else None}
            for e in evidence
        ],
    }
    return Routing(
        outcome=decision.outcome,
        queue=decision.queue,
        severity=decision.severity,
        priority=decision.priority,
        reviewers_required=decision.reviewers_required,
        proposed_actions=tuple(decision.proposed_actions),
        qa_sample=decision.qa_sample,
        scores={k: round(float(v), 4) for k, v in scores.items()},
        reasons=reasons,
        model_version=model_version,
        policy_version=policy.version,
        shadow_scores=tuple(shadow),
    )


def new_upload(req: UploadRequest, *, sha256: str, mime: str, width: int, height: int,
               size_bytes: int) -> NewUpload:
    """One arrival of the content, as the review store records it."""
    return NewUpload(account_id=req.account_id, external_id=req.external_id, source=req.source,
                     context=req.context.model_dump(), sha256=sha256, mime=mime, width=width,
                     height=height, size_bytes=size_bytes)
