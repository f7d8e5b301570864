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
    data_dir: Path = Path("var")
    #: SQLAlchemy URL; default: SQLite file under data_dir
    database_url: str | None = None
    policy_path: Path = BUNDLED_POLICY

    # ---- ingest
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)

    # ---- models
    model_threads: int = Field(default=0, ge=0, description="onnxruntime intra-op threads; 0=auto")
    batch_size: int = Field(default=8, ge=1, le=256)

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

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            for name in ("webhook_secret", "signing_key"):
                if getattr(self, name) == DEV_SECRET:
                    raise ValueError(f"LOOKFIRST_{name.upper()} must be set in production")
        return self

    @cached_property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lookfirst.db').resolve()}"
