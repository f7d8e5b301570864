"""Fixtures for the Label Studio integration: a real Label Studio server (one per session, on a
free loopback port; its venv is created when missing), a real uvicorn serving the preview and
webhook routers, a fresh lookfirst store per test, and a headless Chromium (Playwright).

Playwright fixtures live here only: importing them into test modules breaks its sync API.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from pipeline.api import labelstudio as ls_api
from pipeline.api import previews as previews_api
from pipeline.labelstudio import LabelStudioClient, LabelStudioSync
from pipeline.labelstudio.server import LabelStudioServer, token_for
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.settings import Settings
from review.service import NewUpload, Routing

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "labelstudio"
ADMIN_EMAIL = "admin@lookfirst.local"
ADMIN_PASSWORD = "lookfirst-admin-pw"
REVIEWER_PASSWORD = "reviewer-pw-12345"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    data = tmp_path_factory.mktemp("labelstudio")
    srv = LabelStudioServer(
        data_dir=data, port=free_port(), email=ADMIN_EMAIL, password=ADMIN_PASSWORD,
        token=token_for(uuid.uuid4().hex), venv=ROOT / ".venv-labelstudio",
        task_lock_ttl_s=120,
    )
    t0 = time.monotonic()
    srv.start(wait_s=300)
    srv.first_start_s = round(time.monotonic() - t0, 1)  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot own signals
        pass


@dataclass
class Stack:
    rt: Runtime
    sync: LabelStudioSync
    ls: LabelStudioServer
    api_url: str
    users: dict[str, int]

    def flag(self, n: int, *, scores: dict[str, float] | None = None,
             account: str = "acct-1", **ctx: Any) -> int:
        """Record one flagged upload (a real benign photo, varied per n) and return its item."""
        from PIL import Image
        from skimage import data as skd

        img = Image.fromarray(skd.chelsea()).rotate(n % 360)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        raw = buf.getvalue()
        sha = hashlib.sha256(raw).hexdigest()
        self.rt.blobs.put(raw)
        policy = self.rt.policy
        d = policy.evaluate(scores or {"nudity.explicit": 0.6}, Context.parse(ctx),
                            content_sha256=sha)
        routing = Routing(outcome=d.outcome, queue=d.queue, severity=d.severity,
                          priority=d.priority, reviewers_required=d.reviewers_required,
                          proposed_actions=tuple(d.proposed_actions), qa_sample=d.qa_sample,
                          scores=scores or {"nudity.explicit": 0.6}, reasons=d.reasons,
                          model_version="nudenet-320n@sha256:0123456789ab",
                          policy_version=policy.version)
        up = NewUpload(account_id=account, external_id=f"up-{n}-{uuid.uuid4().hex[:6]}",
                       source="test", context=dict(ctx), sha256=sha, mime="image/jpeg",
                       width=img.width, height=img.height, size_bytes=len(raw))
        with self.rt.db.transaction() as s:
            rec = self.rt.review.record(s, up, routing)
        assert rec.item_id is not None
        return rec.item_id

    def admin(self) -> Any:
        return self.sync.client.sdk


def _ensure_user(sdk: Any, email: str) -> int:
    for u in sdk.users.list():
        if str(u.email).lower() == email:
            return int(u.id)
    r = httpx.post(f"{sdk._client_wrapper.get_base_url()}/api/users/",
                   headers=sdk._client_wrapper.get_headers(),
                   json={"email": email, "username": email, "password": REVIEWER_PASSWORD,
                         "first_name": email.split("@")[0]}, timeout=30)
    r.raise_for_status()
    uid = int(r.json()["id"])
    # a user made through the API may not have a password set that logs in: set it
    httpx.patch(f"{sdk._client_wrapper.get_base_url()}/api/users/{uid}/",
                headers=sdk._client_wrapper.get_headers(),
                json={"password": REVIEWER_PASSWORD}, timeout=30)
    return uid


@pytest.fixture
def stack(ls_server: LabelStudioServer, tmp_path: Path) -> Iterator[Stack]:
    api_port = free_port()
    settings = Settings(
        data_dir=tmp_path / "var",
        labelstudio_url=ls_server.url, labelstudio_token=ls_server.token,
        labelstudio_webhook_secret="test-webhook-secret",
        labelstudio_public_api_url=f"http://127.0.0.1:{api_port}",
        signing_key="test-signing-key", labelstudio_timeout_s=5.0,
    )
    rt = Runtime(settings)
    rt.db.upgrade()
    client = LabelStudioClient(ls_server.url, ls_server.token, timeout_s=5.0)
    sync = LabelStudioSync(rt, client=client, title_prefix=f"t-{uuid.uuid4().hex[:6]}")
    app = FastAPI()
    app.include_router(previews_api.build_router(rt))
    app.include_router(ls_api.build_router(sync))
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning",
                                    lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    users: dict[str, int] = {}
    with rt.db.transaction() as s:
        rt.review.add_reviewer(s, reviewer_id="alice", queues=["adult", "qa", "appeals"])
        rt.review.add_reviewer(s, reviewer_id="sam", queues=["severe", "senior", "adult"],
                               roles=["senior"])
        rt.review.add_reviewer(s, reviewer_id="sue", queues=["severe", "senior"],
                               roles=["senior"])
        rt.review.add_reviewer(s, reviewer_id="bob", queues=["qa"])
    sdk = client.sdk
    for name in ("alice", "sam", "sue", "bob", "mallory"):
        email = f"{name}@reviewers.test"
        users[name] = _ensure_user(sdk, email)
        if name != "mallory":  # mallory has a Label Studio login but is no lookfirst reviewer
            with rt.db.transaction() as s:
                sync.map_reviewer(s, email=email, reviewer_id=name, ls_user_id=users[name])
    try:
        yield Stack(rt=rt, sync=sync, ls=ls_server, api_url=f"http://127.0.0.1:{api_port}",
                    users=users)
    finally:
        server.should_exit = True
        th.join(timeout=10)
        rt.close()


# ---- a real headless browser ---------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    # Label Studio's pages load a large bundle; on two cores shared with a busy test run one
    # took over 30 s (Playwright's default) to show its login form
    pg.set_default_timeout(90_000)
    try:
        yield pg
    finally:
        if request.node.stash.get(_FAILED, False):  # what the browser showed, for the log
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"))
        ctx.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
