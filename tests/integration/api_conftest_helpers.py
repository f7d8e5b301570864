"""A real uvicorn for the API tests: started in a subprocess on 127.0.0.1 with its own data
directory and SQLite database, and the one test scorer, `PixelStatsScorer`.

Run as a module, this file is the server process:

    python -m tests.integration.api_conftest_helpers --fd N [--scorer pixel|nudenet] [--gate F]

(settings come from LOOKFIRST_* variables, like `lookfirst serve`).  The listening socket is
opened by the test process and inherited, so the port is known before the server starts and
no other process can take it in between.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.base import RGBImage, Scorer, ScoreResult

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
DEMO_POLICY = ROOT / "pipeline" / "policies" / "demo.yaml"


class PixelStatsScorer(Scorer):
    """A deterministic backend that scores from pixel statistics, for fast tests.

    nudity.explicit: the share of saturated red pixels; nudity.partial: of saturated green;
    skin.exposed: of saturated blue; person.face: never.  So a test can make an image that
    the default policy allows, sends to review, or holds, without a real model or real
    imagery.  Not a mock: a real `Scorer` that the real pipeline runs end to end."""

    name = "pixelstats"
    version = "pixelstats@sha256:" + hashlib.sha256(b"pixelstats-v1").hexdigest()[:12]
    categories = ("nudity.explicit", "nudity.partial", "skin.exposed", "person.face")

    def _score(self, images: Sequence[RGBImage]) -> list[ScoreResult]:
        out = []
        for img in images:
            r, g, b = (img[..., i].astype(np.int16) for i in range(3))
            red = float(np.mean((r > 200) & (g < 60) & (b < 60)))
            green = float(np.mean((g > 200) & (r < 60) & (b < 60)))
            blue = float(np.mean((b > 200) & (r < 60) & (g < 60)))
            out.append(ScoreResult(
                model_version=self.version,
                scores={"nudity.explicit": round(red, 4), "nudity.partial": round(green, 4),
                        "skin.exposed": round(blue, 4), "person.face": 0.0},
            ))
        return out


# ---- the server process -------------------------------------------------------------------------
def _serve(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from models.base import Scorer as ScorerBase
    from pipeline.api import create_app
    from pipeline.runtime import Runtime, default_scorer
    from pipeline.settings import Settings

    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--scorer", choices=["pixel", "nudenet"], default="pixel")
    p.add_argument("--gate", type=Path, default=None,
                   help="the model finishes loading only once this file exists")
    args = p.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")

    def factory(s: Settings) -> ScorerBase:
        if args.gate is not None:
            while not args.gate.exists():
                time.sleep(0.05)
        return PixelStatsScorer() if args.scorer == "pixel" else default_scorer(s)

    rt = Runtime(settings, scorer_factory=factory)
    rt.db.upgrade()
    app = create_app(settings, runtime=rt)
    sock = socket.socket(fileno=args.fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    rt.close()


# ---- the test side ------------------------------------------------------------------------------
@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    env: Mapping[str, str]
    _keys: dict[tuple[str, ...], str] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.data_dir / 'lookfirst.db').resolve()}"

    def key(self, *scopes: str, rate_per_minute: int | None = None, name: str = "test",
            reviewer: str | None = None) -> str:
        """An API key with these scopes, made in the server's database (as `keys create` does);
        with `reviewer`, that reviewer's own key."""
        cache_key = (*sorted(scopes), str(rate_per_minute), name, str(reviewer))
        if cache_key not in self._keys:
            self._keys[cache_key] = self.new_key(*scopes, rate_per_minute=rate_per_minute,
                                                 name=name, reviewer=reviewer)
        return self._keys[cache_key]

    def new_key(self, *scopes: str, rate_per_minute: int | None = None,
                name: str = "test", reviewer: str | None = None) -> str:
        from pipeline.apikeys import create_key
        from review.db import Database
        from review.service import utcnow

        db = Database(self.db_url)
        try:
            with db.transaction() as s:
                _, raw = create_key(s, name=name, scopes=scopes, rate_per_minute=rate_per_minute,
                                    now=utcnow(), reviewer=reviewer, allow_delegate=True)
        finally:
            db.dispose()
        return raw

    def add_reviewer(self, reviewer: str, queues: Sequence[str], roles: Sequence[str] = ()) -> None:
        """Register a reviewer in the server's database (as `lookfirst reviewers add` does)."""
        from pipeline.runtime import Runtime
        from pipeline.settings import Settings

        rt = Runtime(Settings(data_dir=self.data_dir,
                              policy_path=Path(self.env.get("LOOKFIRST_POLICY_PATH",
                                                            Settings().policy_path))))
        try:
            with rt.db.transaction() as s:
                rt.review.add_reviewer(s, reviewer_id=reviewer, queues=queues, roles=roles)
        finally:
            rt.close()

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_kb(self) -> int:
        """VmHWM: the most resident memory the server process has used so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("VmHWM not found")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_server(
    data_dir: Path,
    *,
    scorer: str = "pixel",
    env: Mapping[str, str] | None = None,
    gate: Path | None = None,
    wait_ready: bool = True,
    timeout_s: float = 90.0,
) -> ApiServer:
    """Start the API in a subprocess on a free loopback port; returns once /health/live answers
    (and /health/ready, unless `wait_ready` is false)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    full_env = {
        **os.environ,
        "ORT_DISABLE_TELEMETRY": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOOKFIRST_DATA_DIR": str(data_dir),
        "LOOKFIRST_MODEL_THREADS": "1",
        **(env or {}),
    }
    full_env.pop("LOOKFIRST_DATABASE_URL", None)
    log_path = data_dir / "server.log"
    argv = [sys.executable, "-m", "tests.integration.api_conftest_helpers", "--fd",
            str(sock.fileno()), "--scorer", scorer]
    if gate is not None:
        argv += ["--gate", str(gate)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(sock.fileno(),))
    sock.close()
    server = ApiServer(f"http://127.0.0.1:{port}", proc, data_dir, log_path, full_env)
    deadline = time.monotonic() + timeout_s
    path = "/health/ready" if wait_ready else "/health/live"
    with httpx.Client(base_url=server.url, timeout=5) as c:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API server exited ({proc.returncode}):\n{server.log()}")
            try:
                if c.get(path).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the API server did not answer {path}:\n{server.log()}")
            time.sleep(0.1)


def running(data_dir: Path, **kw: Any) -> Iterator[ApiServer]:
    """A fixture body: start, yield, stop.  (`ApiServer.log()` has the server's output.)"""
    server = start_server(data_dir, **kw)
    try:
        yield server
    finally:
        server.stop()


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds a whole HTTP response (Content-Length or chunked)."""
    header, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    lowered = header.lower()
    if b"transfer-encoding: chunked" in lowered:
        return body.endswith(b"0\r\n\r\n")
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def raw_request(
    api: ApiServer, head: str, body_chunks: Iterator[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Send a request over a plain socket, stopping as soon as the server answers; returns the
    status, the JSON body and how many body bytes were sent."""
    host, port = api.url.removeprefix("http://").split(":")
    sent = 0
    reply = b""
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head.encode())
        s.setblocking(False)
        pending = b""
        chunks = iter(body_chunks)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not pending:
                pending = next(chunks, b"")
            readable, writable, _ = select.select([s], [s] if pending else [], [], 1.0)
            if readable:
                break  # the server answered (or closed) before the body was all sent
            if writable:
                try:
                    n = s.send(pending[:65536])
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                pending = pending[n:]
        s.setblocking(True)
        s.settimeout(30)
        while not _complete(reply):
            try:
                more = s.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            reply += more
    header, _, body = reply.partition(b"\r\n\r\n")
    status = int(header.split()[1])
    if b"transfer-encoding: chunked" in header.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body), sent


if __name__ == "__main__":
    _serve()
