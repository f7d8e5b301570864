"""GET /metrics in the Prometheus text format (no key needed; keep it on a private network)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}},
)
async def metrics(state: StateDep) -> Response:
    body = await run_in_threadpool(state.metrics.render)  # the queue gauges read the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)
