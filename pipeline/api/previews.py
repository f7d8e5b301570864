"""Signed, expiring links for reviewers' browsers: `GET /v1/previews/{token}` (a blurred,
greyscale JPEG rendition) and `GET /v1/originals/{token}` (the original; every use is recorded
through ReviewService.record_reveal).  Not single-use: Label Studio fetches an image several
times per view.  CORS: Label Studio's origin only.
"""

from __future__ import annotations

import datetime as dt
import html
from urllib.parse import urlsplit

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.api.errors import responses, status_for
from pipeline.blobs import BlobError
from pipeline.previews import (
    LinkInvalid,
    LinkMismatch,
    link_credential,
    render_preview,
    verify_link,
)
from pipeline.runtime import Runtime
from review import ReviewError, content_mime, item_content


def origin_of(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def build_router(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["previews"])
    key = rt.settings.signing_key
    origin = origin_of(rt.settings.labelstudio_url)
    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _refuse(exc: LinkInvalid | ReviewError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "detail": exc.detail}, status_for(exc),
                            headers=cors)

    def _blob_for(claims_item: int, sha256: str) -> bytes:
        with rt.db.transaction() as s:
            if item_content(s, item_id=claims_item) != sha256:
                raise LinkMismatch()
        return rt.blobs.get(sha256)

    @router.get("/v1/previews/{token}", summary="Blurred greyscale preview (signed link)",
                responses={**responses(403, 404),
                           200: {"content": {"image/jpeg": {}}, "description": "The preview"}})
    async def preview(token: str) -> Response:
        try:
            claims = verify_link(key, token, kind="preview", now=dt.datetime.now(dt.UTC))
            data = await run_in_threadpool(_blob_for, claims.item_id, claims.sha256)
            jpeg = await run_in_threadpool(render_preview, data)
        except LinkInvalid as exc:
            return _refuse(exc)
        except BlobError:
            return JSONResponse({"code": "blob.not_found", "detail": "no such content"}, 404,
                                headers=cors)
        remaining = max(0, claims.expires - int(dt.datetime.now(dt.UTC).timestamp()))
        return Response(jpeg, media_type="image/jpeg", headers={
            **cors, "Cache-Control": f"private, max-age={min(remaining, 3600)}",
            "X-Content-Type-Options": "nosniff"})

    @router.get("/v1/originals/{token}", summary="The original image (audited)",
                responses={**responses(403, 404, 422),
                           200: {"content": {"image/*": {}, "text/html": {}},
                                 "description": "The original, or the form asking who and why"}})
    async def original(
        token: str,
        reviewer: str | None = Query(default=None, max_length=128),
        reason: str | None = Query(default=None, max_length=500),
    ) -> Response:
        try:
            claims = verify_link(key, token, kind="original", now=dt.datetime.now(dt.UTC))
        except LinkInvalid as exc:
            return _refuse(exc)
        if not reviewer or not reason:
            # the reveal is a deliberate, named act: ask who and why before showing anything
            return HTMLResponse(
                "<!doctype html><title>Reveal the original</title>"
                "<p>Seeing the original is recorded in the audit log.</p>"
                f'<form method="get" action="{html.escape(token)}">'
                '<label>Your reviewer id <input name="reviewer" required></label> '
                '<label>Why <input name="reason" required></label> '
                "<button>Reveal</button></form>", headers=cors)

        def reveal() -> tuple[bytes, str]:
            with rt.db.transaction() as s:
                if item_content(s, item_id=claims.item_id) != claims.sha256:
                    raise LinkMismatch()
                # the link is the credential (possession, until it expires); the reviewer is
                # the one the form names, so the event marks it as acting for them
                rt.review.record_reveal(s, item_id=claims.item_id, reviewer_id=reviewer,
                                        reason=reason, credential=link_credential(token),
                                        delegate=True)
                mime = content_mime(s, sha256=claims.sha256) or "application/octet-stream"
            return rt.blobs.get(claims.sha256), mime

        try:
            data, mime = await run_in_threadpool(reveal)
        except LinkInvalid as exc:
            return _refuse(exc)
        except ReviewError as exc:
            return _refuse(exc)
        except BlobError:
            return JSONResponse({"code": "blob.not_found", "detail": "no such content"}, 404,
                                headers=cors)
        return Response(data, media_type=mime, headers={
            **cors, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    return router
