"""One pure-ASGI middleware around the whole app: request id, body limit while streaming,
latency metrics per route template, one log line per request, and the catch-all 500.

The body limit counts bytes as they arrive: a declared Content-Length above the limit is
refused before a byte is read, and a chunked body is cut off as soon as it passes the limit,
whatever the endpoint was doing with it.  Log lines carry the method, route template, status,
duration, request id and key prefix: never a query string, a body, a key or any context.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.errors import (
    RequestMalformed,
    RequestTooLarge,
    error_response,
    from_exception,
)
from pipeline.errors import ImageTooLarge, PipelineError
from pipeline.metrics import ApiMetrics

log = logging.getLogger("pipeline.api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: any other method (clients may send anything) is one label, so the series stay bounded
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: (limit in bytes, the error to raise past it) for a request's path and content type
BodyLimit = Callable[[str, str], tuple[int, Callable[[], PipelineError]]]


class ApiMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, body_limit: BodyLimit) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        limit, too_large = self.body_limit(scope["path"], headers.get("content-type", ""))

        status = 500
        response_started = False
        replaced = False
        overflow: PipelineError | None = None
        received = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        async def respond(exc: BaseException) -> None:
            response = from_exception(exc) or error_response(500, "internal", "Internal error.")
            await response(scope, receive, send_with_id)

        async def limited_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = too_large()
                    raise overflow
            return message

        async def guarded_send(message: Message) -> None:
            # Past the limit, whatever the app makes of the interrupted body (a framework may
            # call it "malformed"), the client is told the truth: 413.
            nonlocal replaced
            if overflow is not None and not response_started and not replaced:
                replaced = True
                await respond(overflow)
                return
            if replaced:
                return
            await send_with_id(message)

        try:
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                exc: PipelineError = (
                    too_large() if declared.isdigit()
                    else RequestMalformed("The Content-Length header is not a number.")
                )
                await respond(exc)
                return
            await self.app(scope, limited_receive, guarded_send)
        except Exception as exc:  # the one place nothing may escape from
            if overflow is not None and exc is overflow or from_exception(exc) is not None:
                if not response_started:
                    await respond(exc)
            else:
                _log_internal(exc, scope, request_id)
                if not response_started:
                    await respond(exc)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started_at
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.request_seconds.labels(
                method=method, route=template, status=str(status)
            ).observe(elapsed)
            log.info(
                "%s %s %s %.1fms",
                method,
                template,
                status,
                elapsed * 1000,
                extra={
                    "request_id": request_id,
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "key_prefix": state.get("key_prefix"),
                },
            )


def _log_internal(exc: BaseException, scope: Scope, request_id: str) -> None:
    # Where it happened, not what it said: an exception's message can quote the request.
    frames = [f"{f.filename}:{f.lineno} in {f.name}"
              for f in traceback.extract_tb(exc.__traceback__)]
    route = getattr(scope.get("route"), "path", "unmatched")
    log.error(
        "internal error %s on %s %s (request %s) at %s",
        type(exc).__name__,
        scope["method"],
        route,
        request_id,
        " <- ".join(reversed(frames[-6:])),
        extra={"request_id": request_id, "route": route, "error": type(exc).__name__},
    )


def classify_limit(max_upload_bytes: int, max_json_bytes: int) -> BodyLimit:
    """The limits of this API: uploads to /v1/classify (plus room for multipart framing and
    context fields), small JSON bodies everywhere else."""
    multipart_overhead = 64 * 1024

    def limit(path: str, content_type: str) -> tuple[int, Callable[[], PipelineError]]:
        if path.rstrip("/") == "/v1/labelstudio/webhook":
            # Label Studio's payload carries the task (reasons, context) and the annotation
            return 1 << 20, lambda: RequestTooLarge("The webhook body is larger than 1 MiB.")
        if path.rstrip("/") == "/v1/classify":
            extra = multipart_overhead if content_type.startswith("multipart/") else 0
            return max_upload_bytes + extra, lambda: ImageTooLarge(
                f"The upload is larger than the limit of {max_upload_bytes} bytes."
            )
        return max_json_bytes, lambda: RequestTooLarge(
            f"The request body is larger than {max_json_bytes} bytes."
        )

    return limit
