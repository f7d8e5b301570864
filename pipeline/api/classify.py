"""POST /v1/classify: an upload and its context in, a recorded decision out.

The body is read here rather than by the framework, so that it is read as a stream under the
size limit, in either of two shapes: multipart/form-data (the image in `file`, the context in
form fields), or the raw image as the body with the context in the query string.  Context
values are parsed by `Context.from_pairs`, the same parser as the CLI's `--context`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline.api import idempotency
from pipeline.api.deps import ApiState, ClassifyKey, StateDep
from pipeline.api.errors import RequestInvalid, UnsupportedMediaType, responses
from pipeline.api.schemas import ClassifyPublic
from pipeline.batching import ClassifyInput
from pipeline.errors import ImageError, ImageTooLarge
from pipeline.policy import Context
from pipeline.scoring import Scored

router = APIRouter(prefix="/v1", tags=["classify"])

_ID = re.compile(r"[\x21-\x7e]{1,128}")
_IDS = ("account_id", "upload_id")
CONTEXT_FIELDS = tuple(Context.model_fields)
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "application/octet-stream")

_BOOL = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
_COUNT = {"type": "string", "pattern": "^[0-9]{1,9}$"}
_FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "account_id": {"type": "string", "minLength": 1, "maxLength": 128,
                   "pattern": "^[\\x21-\\x7e]+$",
                   "description": "The uploading account, as the platform names it."},
    "upload_id": {"type": "string", "minLength": 1, "maxLength": 128,
                  "pattern": "^[\\x21-\\x7e]+$",
                  "description": "The platform's id of this upload: (account_id, upload_id) is "
                                 "scored exactly once; a repeat returns the stored decision."},
    "medical_sharing": {**_BOOL, "description": "Shared for medical reasons (e.g. to a doctor)."},
    "recipient_verified_provider": {**_BOOL,
                                    "description": "The recipient is a verified provider."},
    "audience": {"type": "string", "enum": ["private", "direct", "followers", "public"]},
    "account_age_days": {**_COUNT, "description": "Age of the uploading account in days."},
    "prior_strikes": {**_COUNT, "description": "Upheld violations on the account before."},
}
assert set(_FIELD_SCHEMAS) == {*_IDS, *CONTEXT_FIELDS}, "document every Context field"

_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": schema,
         "description": "Raw-body uploads only: " + schema.get("description", name)}
        for name, schema in _FIELD_SCHEMAS.items()
    ],
    "requestBody": {
        "required": True,
        "description": (
            "Either multipart/form-data with the image in `file` and the context in form "
            "fields, or the image itself as the body (context in the query string).  The type "
            "is read from the image's bytes, never from a name or a content type."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "account_id", "upload_id"],
                    "properties": {"file": {"type": "string", "format": "binary"},
                                   **_FIELD_SCHEMAS},
                    "additionalProperties": False,
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
        },
    },
}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key with the same request returns the stored response; with a "
                    "different request, 409 idempotency.mismatch.  Kept per API key.",
    ),
]


@router.post(
    "/classify",
    response_model=ClassifyPublic,
    summary="Classify an upload with its context",
    openapi_extra=_OPENAPI,
    responses={
        **responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
        200: {"description": "The decision (new, or the stored one for a repeated upload)",
              "headers": {"Idempotent-Replayed": {
                  "description": "`true` when this is the stored response to an earlier "
                                 "request with the same Idempotency-Key",
                  "schema": {"type": "string", "enum": ["true"]}}}},
    },
)
async def classify(
    request: Request,
    key: ClassifyKey,
    state: StateDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Score the image, apply the policy with its context and record the decision.  Nothing
    is ever done to the account: the outcome is `allow`, a reversible content `hold`, or
    `review` by a person."""
    svc = state.classifier
    with svc.admit():
        data, fields = await _read(request, state)
        account_id, upload_id = (_external_id(fields.pop(n, None), n) for n in _IDS)
        context = Context.from_pairs([f"{k}={v}" for k, v in fields.items()])
        fp = ""
        if idempotency_key is not None:
            digest = await run_in_threadpool(lambda: hashlib.sha256(data).hexdigest())
            fp = idempotency.fingerprint(
                account_id=account_id, upload_id=upload_id,
                context=context.model_dump(mode="json"), content_sha256=digest,
            )
            stored = await run_in_threadpool(_find, state, key.id, idempotency_key, fp)
            if stored is not None:
                state.metrics.classify.labels(result="replayed").inc()
                return JSONResponse(stored.response, status_code=stored.status_code,
                                    headers={"Idempotent-Replayed": "true"})
        try:
            scored = await svc.classify(ClassifyInput(account_id, upload_id, context, data))
        except ImageError as exc:
            state.metrics.uploads_rejected.labels(code=exc.code).inc()
            raise
        body = public(scored).model_dump(mode="json")
        if idempotency_key is not None:
            stored = await run_in_threadpool(_save, state, key.id, idempotency_key, fp, body)
            if stored is not None:  # a concurrent request with this key finished first
                body = stored.response
        state.metrics.classify.labels(
            result="already_scored" if body["already_scored"] else "scored"
        ).inc()
        return JSONResponse(body)


def public(scored: Scored) -> ClassifyPublic:
    rec = scored.recorded
    assert rec is not None and scored.model_version and scored.policy_version
    return ClassifyPublic(
        decision_id=rec.decision_id,
        account_id=scored.request.account_id,
        upload_id=scored.request.external_id,
        content_sha256=scored.sha256,
        outcome=rec.outcome,  # type: ignore[arg-type]
        queue=rec.queue,
        review_item_id=rec.item_id,
        scores=scored.scores,
        model_version=scored.model_version,
        policy_version=scored.policy_version,
        reasons=scored.reasons,
        already_scored=not rec.created,
        statement_url=f"/v1/decisions/{rec.decision_id}",
    )


# ---- reading the request ----------------------------------------------------------------------
async def _read(request: Request, state: ApiState) -> tuple[bytes, dict[str, str]]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _read_multipart(request)
    if media.startswith("image/") or media == "application/octet-stream":
        fields = _single_values(request.query_params.multi_items(), "query parameter")
        return await _read_raw(request, state.settings.max_upload_bytes), fields
    raise UnsupportedMediaType()


async def _read_raw(request: Request, limit: int) -> bytes:
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:  # (the middleware would stop it too; this names the cause)
            raise ImageTooLarge(f"The upload is larger than the limit of {limit} bytes.")
    return bytes(buf)


async def _read_multipart(request: Request) -> tuple[bytes, dict[str, str]]:
    if request.query_params:
        raise RequestInvalid("With multipart/form-data, send the context as form fields.")
    form = await request.form(max_files=1, max_fields=len(_FIELD_SCHEMAS), max_part_size=4096)
    try:
        upload: UploadFile | None = None
        text: list[tuple[str, str]] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "file" or upload is not None:
                    raise RequestInvalid("Send exactly one file, in the form field `file`.")
                upload = value
            elif name == "file":
                raise RequestInvalid("The form field `file` must be a file.")
            else:
                text.append((name, value))
        if upload is None:
            raise RequestInvalid("The form field `file` (the image) is required.")
        data = await upload.read()
        return data, _single_values(text, "form field")
    finally:
        await form.close()


def _single_values(items: list[tuple[str, str]], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        if name in out:
            raise RequestInvalid(f"The {what} {name!r} is given more than once.")
        out[name] = value
    return out


def _external_id(value: str | None, name: str) -> str:
    if value is None:
        raise RequestInvalid(f"{name} is required.")
    if not _ID.fullmatch(value):
        raise RequestInvalid(f"{name} must be 1 to 128 printable ASCII characters, no spaces.")
    return value


# ---- idempotency, in the route's own transactions -----------------------------------------------
def _find(state: ApiState, key_id: int, key: str, fp: str) -> idempotency.Stored | None:
    with state.rt.db.transaction() as s:
        return idempotency.find(
            s, api_key_id=key_id, key=key, fingerprint=fp, now=state.now(),
            ttl=dt.timedelta(hours=state.settings.api_idempotency_hours),
        )


def _save(
    state: ApiState, key_id: int, key: str, fp: str, body: dict[str, Any]
) -> idempotency.Stored | None:
    try:
        with state.rt.db.transaction() as s:
            idempotency.save(s, api_key_id=key_id, key=key, fingerprint=fp, status_code=200,
                             response=body, now=state.now())
        return None
    except IntegrityError:
        return _find(state, key_id, key, fp)
