"""The API's error contract: every error is `{"code": ..., "detail": ...}` with a stable code.

One place maps the error hierarchies (PipelineError, ReviewError, ModelError, BlobError) and
FastAPI's own errors to status codes.  Validation errors name the field and the rule, never the
value that was sent (it may be personal data).  Anything unexpected is a 500 `internal` from
`ApiMiddleware`, with no traceback in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import ModelError
from pipeline.blobs import BlobError
from pipeline.errors import PipelineError
from review.errors import ReviewError

log = logging.getLogger(__name__)


class RequestInvalid(PipelineError):
    """The request is not valid."""

    code = "request.invalid"
    http_status = 422


class RequestMalformed(PipelineError):
    """The request is malformed."""

    code = "request.malformed"
    http_status = 400


class RequestTooLarge(PipelineError):
    """The request body is larger than this endpoint accepts."""

    code = "request.too_large"
    http_status = 413


class UnsupportedMediaType(PipelineError):
    """Send the image as multipart/form-data (field `file`) or as the raw request body with an
    image/* or application/octet-stream content type."""

    code = "request.unsupported_media_type"
    http_status = 415


class IdempotencyMismatch(PipelineError):
    """This Idempotency-Key was used before with a different request; use a new key."""

    code = "idempotency.mismatch"
    http_status = 409


class NotReady(PipelineError):
    """The service is not ready: the model or the database is not available yet."""

    code = "dependency.unavailable"
    http_status = 503
    exit_code = 3


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
    if isinstance(exc, PipelineError | ReviewError):
        return error_response(exc.http_status, exc.code, exc.detail, getattr(exc, "headers", None))
    if isinstance(exc, ModelError):
        return error_response(503, exc.code, exc.detail, {"Retry-After": "5"})
    if isinstance(exc, BlobError):
        log.error("blob store error", extra={"code": exc.code})
        return error_response(503, "dependency.blob_store", "The image store is unavailable.",
                              {"Retry-After": "5"})
    if isinstance(exc, OperationalError):
        log.error("database unavailable", extra={"error": type(exc.orig).__name__})
        return error_response(503, "dependency.database", "The database is unavailable.",
                              {"Retry-After": "5"})
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
    for cls in (PipelineError, ReviewError, ModelError, BlobError, OperationalError):
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
        409: "Conflict with the record's state, or idempotency.mismatch",
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
