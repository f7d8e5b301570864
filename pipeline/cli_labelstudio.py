"""CLI commands for the Label Studio sync (`lookfirst labelstudio setup|sync|status|start|map`);
registered onto the main app with `register(app)`."""

# no `from __future__ import annotations`: typer reads these annotations at registration time
import time
from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def register(app: typer.Typer) -> None:
    """Add `lookfirst labelstudio ...` to `app`."""
    from pipeline.cli import Exit, emit, guarded, runtime, settings

    ls_app = typer.Typer(no_args_is_help=True, help="Label Studio: the reviewers' UI.")
    app.add_typer(ls_app, name="labelstudio")

    from pipeline.labelstudio import LabelStudioSync

    def _sync() -> LabelStudioSync:

        return LabelStudioSync(runtime())

    @ls_app.command("setup")
    def setup(as_json: JsonOpt = False) -> None:
        """One project per review queue, config from the policy, validated; idempotent."""

        def body() -> int:
            rep = _sync().setup()
            emit({"projects": rep.projects, "created": rep.created, "updated": rep.updated,
                  "webhooks_created": rep.webhooks_created}, as_json)
            return Exit.OK

        raise typer.Exit(guarded(body, as_json=as_json))

    @ls_app.command("map")
    def map_reviewer(email: str, reviewer: str, as_json: JsonOpt = False) -> None:
        """Let a Label Studio user (by email) act as a lookfirst reviewer."""

        def body() -> int:
            sync = _sync()
            uid = sync.client.user_id_for(email)
            with sync.rt.db.transaction() as s:
                sync.map_reviewer(s, email=email, reviewer_id=reviewer, ls_user_id=uid)
            emit({"email": email, "reviewer": reviewer, "labelstudio_user_id": uid}, as_json)
            return Exit.OK

        raise typer.Exit(guarded(body, as_json=as_json))

    @ls_app.command("sync")
    def sync_cmd(
        once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
        interval: Annotated[float, typer.Option(help="Seconds between rounds.")] = 5.0,
        as_json: JsonOpt = False,
    ) -> None:
        """Push new review items as tasks (outbox) and reconcile annotations (poller)."""

        def body() -> int:
            from pipeline.labelstudio import task_worker

            sync = _sync()
            worker = task_worker(sync)
            try:
                while True:
                    d = sync.sync_once(worker)
                    if once or any(d[k] for k in ("enqueued", "delivered", "recorded",
                                                  "refused")):
                        emit(d, as_json)
                    if once:
                        return Exit.OK
                    time.sleep(interval)
            finally:
                worker.close()

        raise typer.Exit(guarded(body, as_json=as_json))

    @ls_app.command("status")
    def status_cmd(as_json: JsonOpt = False) -> None:
        """Backlog (tasks waiting to go out, dead letters) and the last sync."""

        def body() -> int:
            from pipeline.labelstudio import status

            emit(status(runtime()), as_json)
            return Exit.OK

        raise typer.Exit(guarded(body, as_json=as_json))

    @ls_app.command("start")
    def start(
        port: Annotated[int, typer.Option()] = 8080,
        venv: Annotated[Path, typer.Option()] = Path(".venv-labelstudio"),
    ) -> None:
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
