"""A local Label Studio server for laptops and tests: its own virtual environment (pinned 1.23.x,
kept apart from lookfirst's dependencies), bound to 127.0.0.1, telemetry off, a bootstrap admin
with a legacy API token, webhooks to loopback allowed, task locks of minutes, not a day.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PIN = "label-studio>=1.23,<1.24"
DEFAULT_VENV = Path(".venv-labelstudio")


def ensure_venv(venv: Path = DEFAULT_VENV, *, python: str = "python3") -> Path:
    """Create the venv and install Label Studio if missing; returns the `label-studio` path."""
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", PIN],
                   check=True)
    return exe


def token_for(secret: str) -> str:
    """The bootstrap admin's legacy token (40 hex characters) derived from a local secret."""
    return hashlib.sha1(f"lookfirst-labelstudio:{secret}".encode()).hexdigest()


@dataclass
class LabelStudioServer:
    data_dir: Path
    port: int
    email: str
    password: str
    token: str
    venv: Path = DEFAULT_VENV
    task_lock_ttl_s: int = 300
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        data = str(self.data_dir.resolve())
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": data,
            "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
            "FEATURE_FLAGS_OFFLINE": "true",
            "LABEL_STUDIO_USERNAME": self.email, "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            # webhooks go to lookfirst on loopback: this local server only
            "USE_DEFAULT_BANNED_SUBNETS": "false",
            "TASK_LOCK_TTL": str(self.task_lock_ttl_s),
            "DJANGO_DB": "sqlite", "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self, *, wait_s: float = 180.0) -> None:
        exe = ensure_venv(self.venv)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path or (self.data_dir / "labelstudio.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(self.data_dir.resolve()),
             "--enable-legacy-api-token"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait_healthy(wait_s)

    def wait_healthy(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Label Studio did not answer /health within {wait_s:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and children
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline.labelstudio.server`
    ensure_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV)
