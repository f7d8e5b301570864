"""Recording in batches: many decisions per transaction, still one decision per upload.

A batch of predictions becomes decisions exactly as `pipeline.scoring.Orchestrator.decide`
makes them (hash-bank lookup, policy, reasons, `ReviewService.record` with its outbox message
and audit events), but inside ONE transaction for the whole batch, so a crash leaves either
all of a batch or none of it.  `stored` is the other half of exactly-once: an upload already
decided is answered from the store and never reaches the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from pipeline.batch.errors import MODEL_FAILED
from pipeline.batch.predictor import Prediction
from pipeline.batch.sources import SourceRow
from pipeline.errors import PipelineError
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.scoring import Orchestrator, Scored, UploadRequest, new_upload, routing_for
from review import Routing, bank_lookup_many

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
        # the Orchestrator's own reading of a stored decision, so rows answered from the
        # store look exactly like the rows of `lookfirst score`; its thread pool stays idle
        self._orch = Orchestrator(rt, decode_workers=1)

    def close(self) -> None:
        self._orch.close()

    def stored(self, rows: Sequence[SourceRow]) -> dict[int, dict[str, Any]]:
        """Output rows of the uploads among `rows` that already have a decision."""
        rt = self.rt
        out: dict[int, dict[str, Any]] = {}
        wanted = [r for r in rows if r.ok]
        if not wanted:
            return out
        with rt.db.transaction() as s:
            for row in wanted:
                found = rt.review.find_upload(s, account_id=row.account_id,
                                              external_id=row.upload_id)
                if found is None:
                    continue
                scored = Scored(request=_request(row))
                self._orch.fill_from_store(s, scored, found)
                out[row.ordinal] = result_row(row, scored)
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
            matches = bank_lookup_many(s, [p.sha256 or "" for _, p in scoring])
            for row, p in scoring:
                assert p.sha256 is not None and p.mime is not None and p.model_version
                request = _request(row)
                scored = Scored(request=request, sha256=p.sha256)
                try:
                    routing = self._routing(request, p, matches.get(p.sha256))
                except (PipelineError, ValueError) as exc:
                    code = getattr(exc, "code", "policy.invalid_scores")
                    results.append(error_row(row, code, str(exc)))
                    continue
                upload = new_upload(request, sha256=p.sha256, mime=p.mime, width=p.width,
                                    height=p.height, size_bytes=p.size_bytes)
                recorded = rt.review.record(s, upload, routing)
                if not recorded.created:  # decided before (another row, another job)
                    self._orch.fill_from_store(s, scored, recorded)
                else:
                    scored.took(recorded, routing)
                results.append(result_row(row, scored))
        return results

    def _routing(self, req: UploadRequest, p: Prediction, bank_match: str | None) -> Routing:
        assert p.sha256 is not None and p.model_version is not None
        return routing_for(self.rt.policy, req, sha256=p.sha256, scores=p.scores,
                           model_version=p.model_version, evidence=p.evidence, shadow=p.shadow,
                           bank_match=bank_match)
