"""Label Studio's webhook receiver: `POST /v1/labelstudio/webhook`.

Label Studio sends webhooks inside the reviewer's submit request, once, with a 1 s timeout, and
never retries.  So the receiver checks the shared secret, keeps only the ids and the form it
needs, answers at once and judges the annotation afterwards (a background task); the poller
catches whatever never arrived.  Payloads carry the project's secrets: none is ever logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse

from pipeline.labelstudio import SECRET_HEADER, WEBHOOK_ACTIONS, WEBHOOK_PATH, LabelStudioSync

log = logging.getLogger(__name__)


def build_router(sync: LabelStudioSync) -> APIRouter:
    router = APIRouter(tags=["labelstudio"])
    secret = sync.rt.settings.labelstudio_webhook_secret

    @router.post(WEBHOOK_PATH, include_in_schema=True, summary="Label Studio webhook")
    async def webhook(request: Request, background: BackgroundTasks) -> JSONResponse:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return JSONResponse({"code": "auth.invalid", "detail": "bad webhook secret"}, 401)
        try:
            body: Any = json.loads(await request.body())
            action = body.get("action")
            if action not in WEBHOOK_ACTIONS:
                return JSONResponse({"status": "ignored"}, 200)
            ann = body["annotation"]
            task = body.get("task") or {}
            task_id = int(task["id"] if isinstance(task, dict) and "id" in task
                          else ann["task"])
            # keep only what the judge reads; the rest (project token, ...) is dropped here
            kept = {"id": int(ann["id"]), "completed_by": ann.get("completed_by"),
                    "result": ann.get("result") or [],
                    "was_cancelled": bool(ann.get("was_cancelled"))}
        except (ValueError, KeyError, TypeError, AttributeError):
            return JSONResponse({"code": "request.invalid", "detail": "not a webhook"}, 422)
        del body
        background.add_task(_judge, sync, task_id, kept)
        return JSONResponse({"status": "accepted"}, 202)

    return router


def _judge(sync: LabelStudioSync, task_id: int, annotation: dict[str, Any]) -> None:
    try:
        sync.reconcile(task_id, annotation, via="webhook")
    except Exception:  # the poller will judge it; never a payload in the log
        log.warning("webhook annotation left to the poller",
                    extra={"task_id": task_id, "annotation_id": annotation.get("id")},
                    exc_info=False)
