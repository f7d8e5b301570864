"""`lookfirst review decide-bulk`: one verdict for every open copy of an image, or for one
account's upload burst, in one audited act (issue 5, item 11).  Registered onto the main app's
`review` group by `register(app)`."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any

import typer


class By(enum.StrEnum):
    sha256 = "sha256"  # every open upload of the same image
    account = "account"  # one account's upload burst around the item


_GROUP = {By.sha256: "sha256", By.account: "account_burst"}


def register(app: typer.Typer) -> None:
    """Add `decide-bulk` to the `review` group of `app`."""
    for info in app.registered_groups:
        if info.name == "review" and info.typer_instance is not None:
            info.typer_instance.command("decide-bulk")(review_decide_bulk)
            return
    raise RuntimeError("the app has no `review` command group to add decide-bulk to")


def review_decide_bulk(
    item: Annotated[int, typer.Argument(help="The item whose lease the reviewer holds.")],
    reviewer: Annotated[str, typer.Option(help="Who decides (must hold the lease on ITEM).")],
    verdict: Annotated[str, typer.Option(help="violating | benign | benign_medical")],
    category: Annotated[list[str] | None, typer.Option(help="Violated category, repeatable.")]
    = None,
    by: Annotated[By, typer.Option(help="Group by the same image, or by the account's "
                                        "upload burst.")] = By.sha256,
    window_minutes: Annotated[int, typer.Option(min=1, max=7 * 24 * 60, help="With --by "
                                                "account: uploads this close to ITEM's.")] = 60,
    note: Annotated[str, typer.Option(help="The reviewer's note, on every verdict.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many items.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Decide ITEM and every other open item you may claim with the same image (or from the
    same account's burst) with one verdict; two-person items get your one verdict each."""
    from pipeline import cli  # late: pipeline.cli imports this module to register it

    def body() -> int:
        rt = cli.runtime()
        with rt.db.transaction() as s:
            results = rt.review.decide_bulk(
                s, item_id=item, reviewer_id=reviewer, verdict=verdict,
                categories=category or [], note=note, group=_GROUP[by],
                burst_window=dt.timedelta(minutes=window_minutes), limit=limit,
            )
        items: list[dict[str, Any]] = [
            {"item": r.item_id, "status": str(r.status), "verdict_id": r.verdict_id,
             "actions": r.actions, "escalated_to": r.escalated_to}
            for r in results
        ]
        if as_json:
            cli.emit({"anchor": item, "group": _GROUP[by], "items": items}, True)
        else:
            cli.out.print(f"{len(items)} item(s) decided with one verdict ({verdict}):",
                          highlight=False)
            for d in items:
                kinds = ", ".join(f"{a['kind']} → {a['status']}" for a in d["actions"])
                cli.out.print(f"  item {d['item']}: [bold]{d['status']}[/bold]"
                              + (f"  ({kinds})" if kinds else ""), highlight=False)
        return cli.Exit.OK

    raise typer.Exit(cli.guarded(body, as_json=as_json))
