"""The REST API: `create_app(settings)` builds the FastAPI app (one router per resource).

    uvicorn --factory pipeline.api:app_from_env      # or: lookfirst serve

The app owns a micro-batching classify service, a Prometheus registry of its own, the key
verifier and the rate limiter; the runtime (database, policy, blobs, review service, model) is
built from the settings unless one is handed in.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

import contextlib  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import FastAPI  # noqa: E402

from pipeline.api import (  # noqa: E402
    appeals,
    banks,
    classify,
    decisions,
    health,
    keys,
    metrics,
    review,
)
from pipeline.api import errors as api_errors  # noqa: E402
from pipeline.api import labelstudio as labelstudio_api  # noqa: E402
from pipeline.api import previews as previews_api  # noqa: E402
from pipeline.api.deps import ApiState  # noqa: E402
from pipeline.api.middleware import ApiMiddleware, classify_limit  # noqa: E402
from pipeline.apikeys import KeyVerifier, RateLimiter, SharedRateLimiter  # noqa: E402
from pipeline.auth import oidc  # noqa: E402
from pipeline.batching import ClassifyService  # noqa: E402
from pipeline.learning.segments import (  # noqa: E402
    METRICS_WINDOW,
    false_positive_rates,
    read_flagged,
)
from pipeline.metrics import ApiMetrics  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from review import outbox_backlog  # noqa: E402

__all__ = ["app_from_env", "create_app"]

DESCRIPTION = """\
Image moderation with human review: **the model triages, people decide.**  Nothing is done to
an account until a person has looked; the only automated outcomes are `allow`, a reversible
content `hold`, and `review`.

Authenticate with an API key (`Authorization: Bearer lf_…` or `X-API-Key: lf_…`), created with
`lookfirst keys create --scope classify`.  Scopes: `classify`, `review`, `appeal`, `admin`
(all of them).  Every error is `{"code": "...", "detail": "..."}` with a stable code.
"""

TAGS = [
    {"name": "classify", "description": "Uploads in, recorded decisions out."},
    {"name": "decisions", "description": "Statements of reasons; the user's reply to a notice."},
    {"name": "appeals", "description": "The user's request for another look."},
    {"name": "review", "description": "The human review queue (reviewer tools and UIs)."},
    {"name": "keys", "description": "API keys (admin)."},
    {"name": "health", "description": "Liveness and readiness (no key)."},
    {"name": "metrics", "description": "Prometheus metrics (no key)."},
]


def _version() -> str:
    try:
        return metadata.version("lookfirst")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the API.  With `runtime`, the caller owns it (and closes it); without, the app
    builds one from `settings` and closes it on shutdown.  Migrations are not run here: run
    `lookfirst db upgrade` (`lookfirst serve` does) before starting."""
    if settings is None:
        settings = runtime.settings if runtime is not None else Settings()
    rt = runtime or Runtime(settings)
    app_metrics = ApiMetrics()
    classifier = ClassifyService(
        rt,
        max_batch=settings.api_batch_max_size,
        max_wait_s=settings.api_batch_max_wait_ms / 1000,
        queue_limit=settings.api_queue_limit,
        decode_workers=settings.api_decode_workers,
        decoded_budget_bytes=settings.api_decoded_budget_mb << 20,
        metrics=app_metrics,
    )
    state = ApiState(
        settings=settings,
        rt=rt,
        metrics=app_metrics,
        classifier=classifier,
        verifier=KeyVerifier(settings.api_key_cache_s),
        limiter=rate_limiter(settings, rt),
        owns_runtime=runtime is None,
        oidc=oidc.from_settings(settings.oidc_issuer, audience=settings.oidc_audience,
                                jwks_url=settings.oidc_jwks_url,
                                jwks_path=settings.oidc_jwks_path,
                                reviewer_claim=settings.oidc_reviewer_claim),
    )
    app_metrics.watch_review_queues(lambda: _queue_stats(rt))
    app_metrics.watch_outbox(lambda: _outbox_backlog(rt))
    app_metrics.watch_false_positives(lambda: _false_positive_rates(rt),
                                      window_days=METRICS_WINDOW.days)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await classifier.start(preload_model=settings.api_preload_model)
        try:
            yield
        finally:
            await classifier.stop()
            if state.owns_runtime:
                rt.close()

    app = FastAPI(
        title="lookfirst",
        version=_version(),
        summary="Image content moderation with human review: look first, act after.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.lookfirst = state
    api_errors.install(app)
    for module in (classify, decisions, appeals, review, banks, keys, health, metrics):
        app.include_router(module.router)
    # previews and the Label Studio webhook carry their own authentication (a signed,
    # expiring link; the shared webhook secret), not API keys
    app.include_router(previews_api.build_router(rt))
    if settings.labelstudio_token:
        from pipeline.labelstudio import LabelStudioSync

        app.include_router(labelstudio_api.build_router(LabelStudioSync(rt)))
    app.add_middleware(
        ApiMiddleware,
        metrics=app_metrics,
        body_limit=classify_limit(settings.max_upload_bytes, settings.api_max_json_bytes),
    )
    return app


def rate_limiter(settings: Settings, rt: Runtime) -> RateLimiter | SharedRateLimiter:
    """Buckets in the database where several processes may serve one key (PostgreSQL, or
    when asked), in memory otherwise (SQLite has one server process)."""
    store = settings.api_rate_limit_store
    if store == "auto":
        store = "memory" if rt.db.engine.dialect.name == "sqlite" else "database"
    if store == "database":
        return SharedRateLimiter(rt.db, default_per_minute=settings.api_rate_per_minute,
                                 burst_s=settings.api_rate_burst_seconds)
    return RateLimiter(default_per_minute=settings.api_rate_per_minute,
                       burst_s=settings.api_rate_burst_seconds)


def _outbox_backlog(rt: Runtime) -> dict[str, int]:
    with rt.db.transaction() as s:
        return outbox_backlog(s)


def _false_positive_rates(rt: Runtime) -> list[dict[str, Any]]:
    with rt.db.transaction() as s:
        rows = read_flagged(s, since=rt.review.clock() - METRICS_WINDOW)
    return [r.as_dict() for r in false_positive_rates(rows)]


def _queue_stats(rt: Runtime) -> list[dict[str, Any]]:
    with rt.db.transaction() as s:
        return rt.review.stats(s)


def app_from_env() -> FastAPI:
    """For `uvicorn --factory pipeline.api:app_from_env`: settings from LOOKFIRST_* variables."""
    return create_app(Settings())
