"""CLI commands for the REST service (`serve`, `keys`); registered onto the main app."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add the API's commands to `app`.  (`pipeline.cli` is imported inside the commands: it
    is the module that calls this, at the end of its own import.)"""
    keys_app = typer.Typer(no_args_is_help=True, help="API keys: create (shown once), list, "
                                                      "revoke.")
    app.add_typer(keys_app, name="keys")

    @app.command()
    def serve(
        host: Annotated[str | None, typer.Option(help="Interface (default: LOOKFIRST_HOST, "
                                                      "127.0.0.1).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default: LOOKFIRST_PORT, "
                                                      "8000).")] = None,
    ) -> None:
        """Start the REST API (uvicorn): /v1/classify, decisions, appeals, review, /docs."""
        import uvicorn

        from pipeline.api import create_app

        def body() -> int:
            from pipeline import cli

            rt = cli.runtime()  # applies the migrations
            cfg = rt.settings
            bind_host, bind_port = host or cfg.host, cfg.port if port is None else port
            if not _is_loopback(bind_host):
                cli.err.print(f"[yellow]warning[/yellow]: listening on {bind_host}, not only "
                              "this machine; put TLS in front of it", highlight=False)
            shown = f"[{bind_host}]" if ":" in bind_host else bind_host
            cli.out.print(f"lookfirst API on [bold]http://{shown}:{bind_port}[/bold]  "
                          f"(docs: http://{shown}:{bind_port}/docs)", highlight=False)
            sys.stdout.flush()
            uvicorn.run(
                create_app(cfg, runtime=rt),
                host=bind_host,
                port=bind_port,
                log_level=cfg.log_level.lower(),
                access_log=False,  # query strings carry account ids; the app logs routes only
                server_header=False,
                proxy_headers=False,
            )
            rt.close()
            return cli.Exit.OK

        from pipeline import cli

        raise typer.Exit(cli.guarded(body))

    @keys_app.command("create")
    def keys_create(
        scope: Annotated[list[str], typer.Option(help="classify | review | appeal | admin; "
                                                      "repeatable.")],
        name: Annotated[str, typer.Option(help="Who or what uses it.")] = "api-key",
        rate_per_minute: Annotated[int | None, typer.Option(help="Its rate limit (default: "
                                                                 "the server's).")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Create an API key and print it once: only its sha256 is stored."""
        from pipeline.apikeys import create_key

        def body() -> int:
            from pipeline import cli

            rt = cli.runtime()
            with rt.db.transaction() as s:
                info, raw = create_key(s, name=name, scopes=scope,
                                       rate_per_minute=rate_per_minute, now=rt.review.clock())
            if as_json:
                cli.emit({**info.as_dict(), "key": raw}, True)
            else:
                cli.out.print(f"created key {info.id} ({info.name}, prefix {info.prefix}, scopes "
                              f"{', '.join(sorted(info.scopes))}); it is shown only now:",
                              highlight=False)
                sys.stdout.write(raw + "\n")
            return cli.Exit.OK

        from pipeline import cli

        raise typer.Exit(cli.guarded(body, as_json=as_json))

    @keys_app.command("list")
    def keys_list(as_json: JsonOpt = False) -> None:
        """List keys: id, name, prefix, scopes, rate, created, revoked (never the keys)."""
        from rich.table import Table

        from pipeline.apikeys import list_keys

        def body() -> int:
            from pipeline import cli

            rt = cli.runtime()
            with rt.db.transaction() as s:
                rows = [k.as_dict() for k in list_keys(s)]
            if as_json:
                cli.emit(rows, True)
                return cli.Exit.OK
            t = Table("id", "name", "prefix", "scopes", "rate/min", "created", "revoked")
            for r in rows:
                t.add_row(str(r["id"]), str(r["name"]), str(r["prefix"]),
                          ", ".join(r["scopes"]),  # type: ignore[arg-type]
                          str(r["rate_per_minute"] or "default"), str(r["created_at"])[:19],
                          str(r["revoked_at"] or "")[:19])
            cli.out.print(t)
            return cli.Exit.OK

        from pipeline import cli

        raise typer.Exit(cli.guarded(body, as_json=as_json))

    @keys_app.command("revoke")
    def keys_revoke(key_id: int, as_json: JsonOpt = False) -> None:
        """Revoke a key (servers stop accepting it within LOOKFIRST_API_KEY_CACHE_S)."""
        from pipeline.apikeys import revoke_key

        def body() -> int:
            from pipeline import cli

            rt = cli.runtime()
            with rt.db.transaction() as s:
                info = revoke_key(s, key_id=key_id, now=rt.review.clock())
            cli.emit(info.as_dict(), as_json)
            return cli.Exit.OK

        from pipeline import cli

        raise typer.Exit(cli.guarded(body, as_json=as_json))
