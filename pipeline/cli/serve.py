"""`lookfirst serve` (the REST API under uvicorn) and `lookfirst keys ...` (its API keys)."""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Annotated

import typer

from pipeline.cli._common import Exit, JsonOpt, commands, emit, err, group, guarded, out, runtime
from pipeline.errors import ConfigurationError

app = commands()
keys_app = group("keys", "API keys: create (shown once), list, revoke.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
@guarded
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default: LOOKFIRST_HOST, "
                                                  "127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: LOOKFIRST_PORT, "
                                                  "8000).")] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Server processes (uvicorn workers) sharing the port; more than "
                            "one needs PostgreSQL. Rate limits and key revocation hold across "
                            "them (README: REST API).")] = 1,
) -> int:
    """Start the REST API (uvicorn): /v1/classify, decisions, appeals, review, /docs."""
    import uvicorn

    from pipeline.api import create_app

    rt = runtime()  # applies the migrations
    cfg = rt.settings
    if workers > 1 and rt.db.engine.dialect.name == "sqlite":
        rt.close()
        raise ConfigurationError(
            "--workers above 1 needs PostgreSQL (LOOKFIRST_DATABASE_URL): SQLite has one "
            "writer, and the workers share their rate limits through the database")
    bind_host, bind_port = host or cfg.host, cfg.port if port is None else port
    if not _is_loopback(bind_host):
        err.print(f"[yellow]warning[/yellow]: listening on {bind_host}, not only "
                  "this machine; put TLS in front of it", highlight=False)
    shown = f"[{bind_host}]" if ":" in bind_host else bind_host
    out.print(f"lookfirst API on [bold]http://{shown}:{bind_port}[/bold]  "
              f"(docs: http://{shown}:{bind_port}/docs)", highlight=False)
    sys.stdout.flush()
    if workers > 1:
        rt.close()  # each worker builds its own runtime from the same LOOKFIRST_* settings
        if cfg.model_threads == 0:
            # the processes are the parallelism: one model thread each, as in batch jobs
            os.environ["LOOKFIRST_MODEL_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        from pipeline.serving import serve_processes

        # a listening socket per process (SO_REUSEPORT), not uvicorn's one shared socket: a
        # client's connection pool is then spread over the processes (pipeline/serving.py)
        if serve_processes(workers, host=bind_host, port=bind_port,
                           log_level=cfg.log_level.lower()) != 0:
            err.print("[red]a server process failed to start; see its log above[/red]",
                      highlight=False)
            return Exit.DEPENDENCY
        return Exit.OK
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
    return Exit.OK


@keys_app.command("create")
@guarded
def keys_create(
    scope: Annotated[list[str], typer.Option(help="classify | review | appeal | admin | "
                                                  "delegate; repeatable.")],
    name: Annotated[str, typer.Option(help="Who or what uses it.")] = "api-key",
    reviewer: Annotated[str | None, typer.Option(
        help="The reviewer the key belongs to: it acts as them only.")] = None,
    rate_per_minute: Annotated[int | None, typer.Option(help="Its rate limit (default: "
                                                             "the server's).")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Create an API key and print it once: only its sha256 is stored."""
    from pipeline.apikeys import create_key
    from pipeline.auth import operator

    rt = runtime()
    with rt.db.transaction() as s:
        info, raw = create_key(s, name=name, scopes=scope, reviewer=reviewer,
                               rate_per_minute=rate_per_minute, now=rt.review.clock(),
                               allow_delegate=rt.settings.delegate_keys_allowed,
                               by=operator.current().principal())
    if as_json:
        emit({**info.as_dict(), "key": raw}, True)
    else:
        out.print(f"created key {info.id} ({info.name}, prefix {info.prefix}, scopes "
                  f"{', '.join(sorted(info.scopes))}"
                  + (f", reviewer {info.reviewer_id}" if info.reviewer_id else "")
                  + "); it is shown only now:",
                  highlight=False)
        sys.stdout.write(raw + "\n")
    return Exit.OK


@keys_app.command("list")
@guarded
def keys_list(as_json: JsonOpt = False) -> int:
    """List keys: id, name, prefix, scopes, reviewer, rate, created, revoked (never the
    keys)."""
    from rich.table import Table

    from pipeline.apikeys import list_keys

    rt = runtime()
    with rt.db.transaction() as s:
        rows = [k.as_dict() for k in list_keys(s)]
    if as_json:
        emit(rows, True)
        return Exit.OK
    t = Table("id", "name", "prefix", "scopes", "reviewer", "rate/min", "created", "revoked")
    for r in rows:
        t.add_row(str(r["id"]), str(r["name"]), str(r["prefix"]),
                  ", ".join(r["scopes"]),  # type: ignore[arg-type]
                  str(r["reviewer"] or "-"),
                  str(r["rate_per_minute"] or "default"), str(r["created_at"])[:19],
                  str(r["revoked_at"] or "")[:19])
    out.print(t)
    return Exit.OK


@keys_app.command("revoke")
@guarded
def keys_revoke(key_id: int, as_json: JsonOpt = False) -> int:
    """Revoke a key (servers stop accepting it within LOOKFIRST_API_KEY_CACHE_S)."""
    from pipeline.apikeys import revoke_key
    from pipeline.auth import operator

    rt = runtime()
    with rt.db.transaction() as s:
        info = revoke_key(s, key_id=key_id, now=rt.review.clock(),
                          by=operator.current().principal())
    emit(info.as_dict(), as_json)
    return Exit.OK
