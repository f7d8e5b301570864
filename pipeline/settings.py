"""The one Settings class: every knob, read from LOOKFIRST_* variables, with laptop defaults."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_POLICY = Path(__file__).parent / "policies" / "default.yaml"
DEMO_POLICY = Path(__file__).parent / "policies" / "demo.yaml"
DEV_SECRET = "dev-only-not-a-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKFIRST_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    data_dir: Path = Path("var")
    #: SQLAlchemy URL; default: SQLite file under data_dir
    database_url: str | None = None
    policy_path: Path = BUNDLED_POLICY

    # ---- ingest
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)

    # ---- models
    model_threads: int = Field(default=0, ge=0, description="onnxruntime intra-op threads; 0=auto")
    #: "nudenet-320n" (bundled), or "classifier": the registry's active model under
    #: data_dir/models, with its shadow models scoring the same traffic
    scorer: str = "nudenet-320n"
    batch_size: int = Field(default=8, ge=1, le=256)
    #: the NudeNet variant batch jobs and the API run: "auto" (the fastest whose agreement
    #: with fp32, measured on this machine, meets the bar; else fp32), or fp32, ov-bf16,
    #: int8-mixed (each still only when its card passes; fp32 is the fallback)
    model_variant: Literal["auto", "fp32", "ov-bf16", "int8-mixed"] = "auto"

    # ---- batch jobs (`lookfirst batch`; each is also a command-line option)
    #: worker processes (local engine) or actors (Ray); 0 = one per core
    batch_workers: int = Field(default=0, ge=0, le=1024)
    #: images per model call, and decisions per transaction
    batch_job_size: int = Field(default=32, ge=1, le=1024)
    #: output rows per Parquet part (a part is also committed every 30 s)
    batch_part_rows: int = Field(default=2048, ge=1, le=1_000_000)

    # ---- review
    lease_seconds: int = Field(default=15 * 60, gt=0)
    appeal_window_days: int = Field(default=180, ge=0)
    notice_period_hours: int = Field(default=72, ge=0)

    # ---- delivery to the platform (outbox worker)
    webhook_url: str | None = None
    webhook_secret: str = DEV_SECRET
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout_s: float = Field(default=5.0, gt=0)

    # ---- API
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    signing_key: str = DEV_SECRET
    #: the most images one model call takes when concurrent requests are coalesced
    api_batch_max_size: int = Field(default=16, ge=1, le=256)
    #: how long the first request of a batch waits for company before the model runs
    api_batch_max_wait_ms: float = Field(default=4.0, ge=0, le=1000)
    #: classify requests admitted at once (reading, decoding, queued, scoring); above it: 503
    api_queue_limit: int = Field(default=64, ge=1, le=10_000)
    #: threads that decode uploads (Pillow releases the GIL); 0 = one per core, at most 4
    api_decode_workers: int = Field(default=0, ge=0, le=64)
    #: decoded pixels waiting for or inside the model, in MB; past it, decoding waits
    api_decoded_budget_mb: int = Field(default=256, ge=16)
    #: default per-key rate; a key's own `rate_per_minute` overrides it
    api_rate_per_minute: int = Field(default=600, ge=1)
    #: the token bucket holds this many seconds' worth of requests (the allowed burst)
    api_rate_burst_seconds: float = Field(default=10.0, gt=0, le=3600)
    #: where the buckets live: "database" holds a key's rate across every server process
    #: (`lookfirst serve --workers N`); "memory" is per process; "auto": database on
    #: PostgreSQL, memory on SQLite
    api_rate_limit_store: Literal["auto", "memory", "database"] = "auto"
    #: JSON bodies of the non-upload endpoints (appeals, verdicts) are refused above this
    api_max_json_bytes: int = Field(default=64 * 1024, ge=1024)
    #: a stored Idempotency-Key response is replayed for this long, then the key is free
    api_idempotency_hours: int = Field(default=24, ge=1)
    #: verified keys are cached this long; a revoked key stops working within it
    api_key_cache_s: float = Field(default=5.0, ge=0, le=300)
    #: load the model when the server starts (readiness is 503 until it has loaded)
    api_preload_model: bool = True
    #: production refuses to create `delegate`-scoped keys (a credential that acts for any
    #: reviewer it names) unless this is set: a console behind the platform's own login
    allow_delegate_keys: bool = False

    # ---- reviewers' OpenID Connect tokens (pipeline.auth.oidc; off unless an issuer is set)
    #: the `iss` every token must carry; also turns bearer JWTs on for the review routes
    oidc_issuer: str | None = None
    #: the `aud` this service is registered as at the identity provider
    oidc_audience: str | None = None
    #: the identity provider's JWKS (its `jwks_uri`), or a file holding it
    oidc_jwks_url: str | None = None
    oidc_jwks_path: Path | None = None
    #: the claim naming the reviewer id (sub, preferred_username, email, a custom claim)
    oidc_reviewer_claim: str = "sub"

    # ---- Label Studio (the reviewer UI; lookfirst stays the system of record)
    #: the Label Studio server (`make run` starts one here; or point at an existing one)
    labelstudio_url: str = "http://127.0.0.1:8080"
    #: its API token (the bootstrap admin's legacy token for the local server)
    labelstudio_token: str | None = None
    #: sent by Label Studio in X-Lookfirst-Webhook-Secret with every webhook
    labelstudio_webhook_secret: str = DEV_SECRET
    #: where the reviewer's browser reaches lookfirst's API (previews, originals)
    labelstudio_public_api_url: str = "http://127.0.0.1:8000"
    #: where Label Studio posts webhooks; default: the public API URL's receiver
    labelstudio_webhook_url: str | None = None
    #: a preview link must outlive the task's wait in the queue (fetched many times per view)
    labelstudio_preview_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: the link that reveals the original (each use is audited)
    labelstudio_original_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Label Studio's lock on a task after a reviewer opens it (its default is a day)
    labelstudio_task_lock_ttl_s: int = Field(default=300, ge=30)
    labelstudio_timeout_s: float = Field(default=10.0, gt=0)
    #: the bootstrap admin `make run` creates for the local server
    labelstudio_admin_email: str = "admin@lookfirst.local"
    labelstudio_admin_password: str = DEV_SECRET

    # hash banks (README "Banks", docs/pdq.md)
    #: two PDQ hashes at most this many bits apart are the same picture (PDQ's customary 31)
    bank_pdq_threshold: int = Field(default=31, ge=0, le=63)
    #: a PDQ hash of lower quality (0-100; flat images) never matches, as query or entry
    bank_pdq_quality_floor: int = Field(default=50, ge=0, le=100)
    #: probe every one-bit neighbour too: complete up to the threshold, ~10x slower lookups
    bank_pdq_exhaustive: bool = False
    #: flood protection: an entry matching more uploads than this within the window is
    #: quarantined pending review
    bank_flood_limit: int = Field(default=1000, ge=1)
    bank_flood_window_s: int = Field(default=3600, ge=1)

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            for name in ("webhook_secret", "signing_key", "labelstudio_webhook_secret",
                         "labelstudio_admin_password"):
                if getattr(self, name) == DEV_SECRET:
                    raise ValueError(f"LOOKFIRST_{name.upper()} must be set in production")
        return self

    @property
    def delegate_keys_allowed(self) -> bool:
        """Whether `keys create --scope delegate` may make a key that acts for any reviewer it
        names: in development, or in production with LOOKFIRST_ALLOW_DELEGATE_KEYS."""
        return self.environment != "production" or self.allow_delegate_keys

    @cached_property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lookfirst.db').resolve()}"
