"""The API's error contract: every error is `{"code": ..., "detail": ...}` with a stable code.

`HTTP_STATUS` is the one table from an error's kind to its status (the CLI's exit codes are in
`pipeline.cli._common`); `from_exception` applies it to the error hierarchies (CodedError:
PipelineError, ModelError, BlobError; ReviewError) and FastAPI's own errors.  Validation errors
name the field and the rule, never the value that was sent (it may be personal data).  Anything
unexpected is a 500 `internal` from `ApiMiddleware`, with no traceback in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import CodedError
from pipeline.blobs import BlobError
from pipeline.errors import ErrorKind, PipelineError
from review import ReviewError

log = logging.getLogger(__name__)

#: an error's kind -> its HTTP status: the one place the API decides a status
HTTP_STATUS: Final[Mapping[ErrorKind, int]] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNPROCESSABLE: 422,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED_MEDIA: 415,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.LIMITED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.CHECK_FAILED: 409,  # the stored records contradict themselves (the audit chain)
}
#: seconds a client is told to wait after a 503 whose error names no wait of its own
DEFAULT_RETRY_AFTER_S = 5


class RequestInvalid(PipelineError):
    """The request is not valid."""

    code = "request.invalid"
    kind = ErrorKind.UNPROCESSABLE


class RequestMalformed(PipelineError):
    """The request is malformed."""

    code = "request.malformed"
    kind = ErrorKind.INVALID


class RequestTooLarge(PipelineError):
    """The request body is larger than this endpoint accepts."""

    code = "request.too_large"
    kind = ErrorKind.TOO_LARGE


class UnsupportedMediaType(PipelineError):
    """Send the image as multipart/form-data (field `file`) or as the raw request body with an
    image/* or application/octet-stream content type."""

    code = "request.unsupported_media_type"
    kind = ErrorKind.UNSUPPORTED_MEDIA


class IdempotencyMismatch(PipelineError):
    """This Idempotency-Key was used before with a different request; use a new key."""

    code = "idempotency.mismatch"
    kind = ErrorKind.CONFLICT


class NotReady(PipelineError):
    """The service is not ready: the model or the database is not available yet."""

    code = "dependency.unavailable"
    kind = ErrorKind.UNAVAILABLE


def status_for(exc: CodedError | ReviewError) -> int:
    """The HTTP status of one of our errors, from its kind."""
    return HTTP_STATUS[ErrorKind(exc.kind)]


def headers_for(exc: CodedError | ReviewError) -> dict[str, str]:
    """What the status implies: a challenge with a 401, a wait with a 429 or 503."""
    kind = ErrorKind(exc.kind)
    if kind is ErrorKind.UNAUTHENTICATED:
        return {"WWW-Authenticate": "Bearer"}
    wait = getattr(exc, "retry_after", None)
    if wait is None and kind is ErrorKind.UNAVAILABLE:
        wait = DEFAULT_RETRY_AFTER_S
    return {} if wait is None else {"Retry-After": str(wait)}


_HTTP_CODES = {
    400: "request.malformed",
    401: "auth.missing",
    403: "auth.forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request.too_large",
    415: "request.unsupported_media_type",
    422: "request.invalid",
    429: "rate_limited",
}


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status,
                        headers=dict(headers or {}))


def from_exception(exc: BaseException) -> JSONResponse | None:
    """The response for one of our errors, or None for anything else."""
    if isinstance(exc, BlobError):  # before CodedError: the store's own detail stays in the log
        log.error("blob store error", extra={"code": exc.code})
        return error_response(status_for(exc), "dependency.blob_store",
                              "The image store is unavailable.", headers_for(exc))
    if isinstance(exc, CodedError | ReviewError):
        return error_response(status_for(exc), exc.code, exc.detail, headers_for(exc))
    if isinstance(exc, OperationalError):
        log.error("database unavailable", extra={"error": type(exc.orig).__name__})
        return error_response(503, "dependency.database", "The database is unavailable.",
                              {"Retry-After": str(DEFAULT_RETRY_AFTER_S)})
    return None


def validation_detail(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)[:1000]


async def _ours(request: Request, exc: Exception) -> JSONResponse:
    response = from_exception(exc)
    assert response is not None
    return response


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, RequestInvalid.code, validation_detail(exc.errors()))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http.{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return error_response(exc.status_code, code, detail, exc.headers)


def install(app: FastAPI) -> None:
    for cls in (CodedError, ReviewError, OperationalError):
        app.add_exception_handler(cls, _ours)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can return."""
    from pipeline.api.schemas import ErrorPublic

    text = {
        400: "Malformed request (e.g. a broken multipart body)",
        401: "No API key, or an invalid one (auth.missing, auth.invalid)",
        403: "The key lacks the scope, or the reviewer is not entitled",
        404: "No such record",
        409: "Conflict with the record's state, idempotency.mismatch, or "
             "upload.context_conflict (an upload id scored before with another context)",
        413: "Body too large (image.too_large, request.too_large)",
        415: "Not an accepted image type or content type",
        422: "Invalid request (request.invalid, context.invalid, image.*)",
        429: "Rate limited (rate_limited) or exposure cap; see Retry-After",
        503: "Overloaded, not ready, or a dependency is unavailable; see Retry-After",
    }
    retry = {"Retry-After": {"description": "Seconds to wait before retrying",
                             "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return {
        s: {"model": ErrorPublic, "description": text.get(s, "Error"),
            **({"headers": retry} if s in (429, 503) else {})}
        for s in statuses
    }


#: statuses every authenticated route can return (400: a body that is not even JSON)
AUTH_ERRORS = (400, 401, 403, 413, 422, 429, 503)
