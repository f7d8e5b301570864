"""Recording in batches: many decisions per transaction, still one decision per upload.

A batch of predictions becomes decisions through the same function as the API's requests
(`pipeline.scoring.record_scored`: hash-bank lookup, `pipeline.routing.route`, the review
store's `record_many`) in ONE transaction for the whole batch, with each upload's outbox
message and audit events, so a crash leaves either all of a batch or none of it.  `stored` is
the other half of exactly-once: an upload already decided is answered from the store and never
reaches the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.batch.errors import MODEL_FAILED
from pipeline.batch.predictor import Prediction
from pipeline.batch.sources import SourceRow
from pipeline.errors import UploadContextConflict
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.scoring import Scored, ToRecord, UploadRequest, record_scored
from review import DecisionRecord, NewUpload, Recorded, get_decisions

__all__ = ["BatchRecorder", "error_row", "result_row"]


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
        """Decide and record every row that has a prediction; one transaction in all
        (`pipeline.scoring.record_scored`, which the API and `lookfirst score` record through
        too)."""
        results: list[dict[str, Any]] = []
        scoring: list[tuple[SourceRow, ToRecord]] = []
        for row in rows:
            p = predictions.get(row.ordinal)
            if p is None:
                results.append(error_row(row, MODEL_FAILED, "no prediction for this row"))
            elif p.error_code is not None:
                results.append(error_row(row, p.error_code, p.error_detail))
            else:
                scoring.append((row, _to_record(row, p)))
        errors = record_scored(self.rt, [item for _, item in scoring])
        for (row, item), error in zip(scoring, errors, strict=True):
            if error is None:
                results.append(result_row(row, item.scored))
            else:
                code = getattr(error, "code", "policy.invalid_scores")
                detail = getattr(error, "detail", None) or str(error)
                results.append(error_row(row, code, detail))
        return results


def _to_record(row: SourceRow, p: Prediction) -> ToRecord:
    assert p.sha256 is not None and p.mime is not None
    request = _request(row)
    upload = NewUpload(
        account_id=request.account_id, external_id=request.external_id, source=request.source,
        context=request.context.model_dump(), sha256=p.sha256, mime=p.mime, width=p.width,
        height=p.height, size_bytes=p.size_bytes,
        pdq=p.pdq.original.hex if p.pdq is not None else None,
        pdq_quality=p.pdq.quality if p.pdq is not None else None)
    return ToRecord(Scored(request=request, sha256=p.sha256), upload, p.result(), p.pdq,
                    p.shadow)


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
