"""Recording in batches: many decisions per transaction, still one decision per upload.

A batch of predictions becomes decisions exactly as the API's do (hash-bank lookup, then
`pipeline.routing.route`), recorded by the review store's `record_many` in ONE transaction
for the whole batch, with each upload's outbox message and audit events, so a crash leaves
either all of a batch or none of it.  `stored` is the other half of exactly-once: an upload
already decided is answered from the store and never reaches the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from pipeline.banks import Query
from pipeline.batch.errors import MODEL_FAILED
from pipeline.batch.predictor import Prediction
from pipeline.batch.sources import SourceRow
from pipeline.errors import PipelineError, UploadContextConflict
from pipeline.policy import Context
from pipeline.routing import route
from pipeline.runtime import Runtime
from pipeline.scoring import Scored, UploadRequest
from review import DecisionRecord, NewUpload, Recorded, Routing, get_decisions

__all__ = ["BatchRecorder", "error_row", "result_row"]

logger = logging.getLogger(__name__)

_ATTEMPTS = 3


def _request(row: SourceRow) -> UploadRequest:
    return UploadRequest(
        account_id=row.account_id,
        external_id=row.upload_id,
        context=Context.parse(row.context),
        source="batch",
        label=row.label,
    )


def result_row(row: SourceRow, scored: Scored) -> dict[str, Any]:
    """The output row (Parquet) of one source row: ids, sha256, scores, versions, outcome,
    queue, reasons, error code."""
    d = scored.as_dict()
    error = d.get("error")
    return {
        "ordinal": row.ordinal,
        "input": row.label,
        "upload_id": row.upload_id,
        "account_id": row.account_id,
        "sha256": d.get("sha256"),
        "decision_id": d.get("decision_id"),
        "review_item_id": d.get("review_item_id"),
        "model_version": d.get("model_version"),
        "policy_version": d.get("policy_version"),
        "outcome": d.get("outcome"),
        "queue": d.get("queue"),
        "scores": dict(d.get("scores") or {}),
        "reasons": d.get("reasons"),
        "already_scored": d.get("already_scored"),
        "error_code": error["code"] if error else None,
        "error_detail": error["detail"] if error else None,
    }


def error_row(row: SourceRow, code: str, detail: str | None) -> dict[str, Any]:
    return {
        "ordinal": row.ordinal, "input": row.label, "upload_id": row.upload_id,
        "account_id": row.account_id, "sha256": None, "decision_id": None,
        "review_item_id": None, "model_version": None, "policy_version": None,
        "outcome": None, "queue": None, "scores": {}, "reasons": None,
        "already_scored": None, "error_code": code, "error_detail": detail,
    }


class BatchRecorder:
    """Turns predictions into recorded decisions, one transaction per batch."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def close(self) -> None:
        """Nothing held between batches (kept so a job can close what it opened)."""

    def stored(self, rows: Sequence[SourceRow]) -> dict[int, dict[str, Any]]:
        """Output rows of the uploads among `rows` that already have a decision (one lookup
        for the whole batch)."""
        rt = self.rt
        wanted = [r for r in rows if r.ok]
        if not wanted:
            return {}
        with rt.db.transaction() as s:
            found = rt.review.find_uploads(s, [(r.account_id, r.upload_id) for r in wanted])
            if not found:
                return {}
            decisions = get_decisions(s, decision_ids=[f.decision_id for f in found.values()])
        out: dict[int, dict[str, Any]] = {}
        for row in wanted:
            hit = found.get((row.account_id, row.upload_id))
            if hit is not None:
                out[row.ordinal] = _answer_from_store(row, Scored(request=_request(row)), hit,
                                                      decisions[hit.decision_id])
        return out

    def record(
        self, rows: Sequence[SourceRow], predictions: Mapping[int, Prediction]
    ) -> list[dict[str, Any]]:
        """Decide and record every row that has a prediction; one transaction in all."""
        for attempt in range(_ATTEMPTS):
            try:
                return self._record_once(rows, predictions)
            except IntegrityError:
                # another writer recorded one of these uploads first; the retry finds it and
                # answers with the stored decision instead of a second one
                if attempt == _ATTEMPTS - 1:
                    raise
                logger.info("batch raced another writer; retrying", extra={"rows": len(rows)})
        raise AssertionError("unreachable")  # pragma: no cover

    def _record_once(
        self, rows: Sequence[SourceRow], predictions: Mapping[int, Prediction]
    ) -> list[dict[str, Any]]:
        rt = self.rt
        results: list[dict[str, Any]] = []
        scoring: list[tuple[SourceRow, Prediction]] = []
        for row in rows:
            p = predictions.get(row.ordinal)
            if p is None:
                results.append(error_row(row, MODEL_FAILED, "no prediction for this row"))
            elif p.error_code is not None:
                results.append(error_row(row, p.error_code, p.error_detail))
            else:
                scoring.append((row, p))
        if not scoring:
            return results
        with rt.db.transaction() as s:
            matches = rt.banks.match_many(
                s, [Query(sha256=p.sha256 or "", account_id=row.account_id,
                          pdq=p.pdq) for row, p in scoring], at=rt.review.clock())
            entries: list[tuple[SourceRow, Scored, NewUpload, Routing]] = []
            for (row, p), hit in zip(scoring, matches, strict=True):
                assert p.sha256 is not None and p.mime is not None
                request = _request(row)
                try:
                    routing = route(rt.policy, p.result(), context=request.context,
                                    sha256=p.sha256, bank_hit=hit,
                                    shadow=p.shadow)
                except (PipelineError, ValueError) as exc:
                    code = getattr(exc, "code", "policy.invalid_scores")
                    results.append(error_row(row, code, str(exc)))
                    continue
                upload = NewUpload(
                    account_id=request.account_id, external_id=request.external_id,
                    source=request.source, context=request.context.model_dump(),
                    sha256=p.sha256, mime=p.mime, width=p.width, height=p.height,
                    size_bytes=p.size_bytes,
                    pdq=p.pdq.original.hex if p.pdq is not None else None,
                    pdq_quality=p.pdq.quality if p.pdq is not None else None)
                entries.append((row, Scored(request=request, sha256=p.sha256), upload, routing))
            recorded = rt.review.record_many(s, [(u, r) for _, _, u, r in entries])
            # decided before (another row, another job): answered with what was decided then
            again = [rec.decision_id for rec in recorded if not rec.created]
            stored = get_decisions(s, decision_ids=again) if again else {}
        for (row, scored, _, routing), rec in zip(entries, recorded, strict=True):
            if rec.created:
                scored.recorded = rec
                scored.scores = dict(routing.scores)
                scored.model_version = routing.model_version
                scored.policy_version = routing.policy_version
                scored.reasons = dict(routing.reasons)
                results.append(result_row(row, scored))
            else:
                results.append(_answer_from_store(row, scored, rec, stored[rec.decision_id]))
        return results


def _answer_from_store(row: SourceRow, scored: Scored, found: Recorded,
                       decision: DecisionRecord) -> dict[str, Any]:
    """The output row of an upload decided before (by an earlier job, or an earlier row of
    this one).  Asked again with another context, it is that row's error
    (`upload.context_conflict`: the first decision stands); the job goes on."""
    try:
        scored.fill_from_store(found, decision)
    except UploadContextConflict as exc:
        return error_row(row, exc.code, exc.detail)
    return result_row(row, scored)
