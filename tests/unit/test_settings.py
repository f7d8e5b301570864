"""Settings: laptop defaults, and no default secret outside development."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.settings import BUNDLED_POLICY, Settings


def test_laptop_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOOKFIRST_DATA_DIR", "LOOKFIRST_DATABASE_URL", "LOOKFIRST_POLICY_PATH"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.data_dir == Path("var") and s.blob_dir == Path("var/blobs")
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("var/lookfirst.db")
    assert s.policy_path == BUNDLED_POLICY


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOKFIRST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOKFIRST_DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings()
    assert s.blob_dir == tmp_path / "blobs" and s.db_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    "secret",
    ["WEBHOOK_SECRET", "SIGNING_KEY", "LABELSTUDIO_WEBHOOK_SECRET", "LABELSTUDIO_ADMIN_PASSWORD"],
)
def test_production_refuses_each_default_secret(monkeypatch: pytest.MonkeyPatch,
                                                secret: str) -> None:
    monkeypatch.setenv("LOOKFIRST_ENVIRONMENT", "production")
    for name in ("WEBHOOK_SECRET", "SIGNING_KEY", "LABELSTUDIO_WEBHOOK_SECRET",
                 "LABELSTUDIO_ADMIN_PASSWORD"):
        if name != secret:
            monkeypatch.setenv(f"LOOKFIRST_{name}", "a-real-secret-" + name.lower())
    with pytest.raises(ValidationError, match=f"LOOKFIRST_{secret}"):
        Settings()
