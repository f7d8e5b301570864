"""`lookfirst labelstudio setup|map|sync|status|start`: Label Studio as the reviewers' UI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, runtime, settings

if TYPE_CHECKING:
    from pipeline.labelstudio import LabelStudioSync

app = group("labelstudio", "Label Studio: the reviewers' UI.")


def _sync() -> LabelStudioSync:
    from pipeline.labelstudio import LabelStudioSync

    return LabelStudioSync(runtime())


@app.command("setup")
@guarded
def setup(as_json: JsonOpt = False) -> int:
    """One project per review queue, config from the policy, validated; idempotent."""
    rep = _sync().setup()
    emit({"projects": rep.projects, "created": rep.created, "updated": rep.updated,
          "webhooks_created": rep.webhooks_created}, as_json)
    return Exit.OK


@app.command("map")
@guarded
def map_reviewer(email: str, reviewer: str, as_json: JsonOpt = False) -> int:
    """Let a Label Studio user (by email) act as a lookfirst reviewer."""
    sync = _sync()
    uid = sync.client.user_id_for(email)
    with sync.rt.db.transaction() as s:
        sync.map_reviewer(s, email=email, reviewer_id=reviewer, ls_user_id=uid)
    emit({"email": email, "reviewer": reviewer, "labelstudio_user_id": uid}, as_json)
    return Exit.OK


@app.command("sync")
@guarded
def sync_cmd(
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between rounds.")] = 5.0,
    as_json: JsonOpt = False,
) -> int:
    """Push new review items as tasks (outbox) and reconcile annotations (poller)."""
    from pipeline.labelstudio import task_worker

    sync = _sync()
    worker = task_worker(sync)
    try:
        while True:
            d = sync.sync_once(worker)
            if once or any(d[k] for k in ("enqueued", "delivered", "recorded", "refused")):
                emit(d, as_json)
            if once:
                return Exit.OK
            time.sleep(interval)
    finally:
        worker.close()


@app.command("status")
@guarded
def status_cmd(as_json: JsonOpt = False) -> int:
    """Backlog (tasks to create or close, dead letters), the last sync, and the poller's lag:
    seconds since its last good read of Label Studio."""
    from pipeline.labelstudio import status

    emit(status(runtime()), as_json)
    return Exit.OK


@app.command("start")
@guarded
def start(
    port: Annotated[int, typer.Option()] = 8080,
    venv: Annotated[Path, typer.Option()] = Path(".venv-labelstudio"),
) -> int:
    """Start a local Label Studio (its own venv, 127.0.0.1) and keep it running."""
    from pipeline.labelstudio.server import LabelStudioServer, token_for

    cfg = settings()
    srv = LabelStudioServer(
        data_dir=cfg.data_dir / "labelstudio", port=port, email=cfg.labelstudio_admin_email,
        password=cfg.labelstudio_admin_password,
        token=cfg.labelstudio_token or token_for(cfg.signing_key), venv=venv,
        task_lock_ttl_s=cfg.labelstudio_task_lock_ttl_s,
    )
    srv.start(wait_s=300)
    typer.echo(f"Label Studio: {srv.url}  login {srv.email}  "
               f"(LOOKFIRST_LABELSTUDIO_URL={srv.url} LOOKFIRST_LABELSTUDIO_TOKEN={srv.token})")
    try:
        while srv.proc is not None and srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return Exit.OK

