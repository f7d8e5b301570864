"""Liveness and readiness (no key needed): ready means the model is loaded and the database
answers; until then 503, so a load balancer sends no uploads to a server that cannot score."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import ApiState, StateDep
from pipeline.api.errors import NotReady, responses
from pipeline.api.schemas import LivePublic, ReadyPublic

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=LivePublic, summary="The process is up")
async def live() -> LivePublic:
    return LivePublic(status="ok")


@router.get("/ready", response_model=ReadyPublic, summary="Ready to classify",
            responses=responses(503))
async def ready(state: StateDep) -> ReadyPublic:
    rt = state.rt
    if not rt.scorer_loaded:
        error = state.classifier.model_error
        raise NotReady(
            f"The model failed to load ({getattr(error, 'code', type(error).__name__)})."
            if error is not None else "The model is loading."
        )
    await run_in_threadpool(_ping, state)
    return ReadyPublic(status="ready", model_version=rt.scorer.version,
                       policy_version=rt.policy.version)


def _ping(state: ApiState) -> None:
    try:
        with state.rt.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise NotReady(f"The database does not answer ({type(exc).__name__}).") from None
