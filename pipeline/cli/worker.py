"""`lookfirst worker` and `lookfirst outbox ...`: delivery of the outbox to the platform."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli._common import Exit, JsonOpt, commands, emit, group, guarded, runtime

app = commands()
outbox_app = group("outbox", "Messages waiting for the platform.")


@app.command()
@guarded
def worker(
    once: Annotated[bool, typer.Option(help="One pass, then exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 1.0,
    execute_due: Annotated[bool, typer.Option(help="Also execute approved actions that are "
                                                   "due.")] = True,
    as_json: JsonOpt = False,
) -> int:
    """Deliver the outbox to the platform's webhook (signed, idempotent, retried)."""
    import time

    from pipeline.delivery import platform_worker

    rt = runtime()
    w = platform_worker(rt)
    try:
        while True:
            executed = 0
            if execute_due:
                with rt.db.transaction() as s:
                    executed = len(rt.review.execute_due(s, actor="worker"))
                with rt.db.transaction() as s:
                    rt.review.expire_leases(s)
            r = w.run_once()
            d = {"executed": executed, "leased": r.leased, "delivered": r.delivered,
                 "retried": r.retried, "dead": r.dead}
            if once or r.leased or executed:
                emit(d, as_json)
            if once:
                return Exit.OK
            time.sleep(interval)
    finally:
        w.close()


@outbox_app.command("status")
@guarded
def outbox_status(as_json: JsonOpt = False) -> int:
    """Backlog per status (pending, delivered, dead)."""
    from review import outbox_backlog

    rt = runtime()
    with rt.db.transaction() as s:
        emit(outbox_backlog(s), as_json)
    return Exit.OK


@outbox_app.command("list")
@guarded
def outbox_list(status: Annotated[str | None, typer.Option()] = None,
                as_json: JsonOpt = False) -> int:
    """The newest outbox rows (dead letters with --status dead)."""
    from review import list_outbox

    rt = runtime()
    with rt.db.transaction() as s:
        emit(list_outbox(s, status=status), as_json)
    return Exit.OK
