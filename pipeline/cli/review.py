"""`lookfirst review ...`: the human review queue, from listing to a (bulk) verdict and appeals."""

from __future__ import annotations

import datetime as dt
import enum
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, out, runtime
from review import MAX_CLAIM_BATCH

app = group("review", "The human review queue.")


@app.command("list")
@guarded
def review_list(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
    reviewer: Annotated[str | None, typer.Option(help="As this reviewer sees it.")] = None,
    include_closed: Annotated[bool, typer.Option("--all", help="Include decided items.")] = False,
    as_json: JsonOpt = False,
) -> int:
    """List review items, most urgent first."""
    from review import OPEN_ITEM_STATUSES

    rt = runtime()
    statuses = status or (None if include_closed else sorted(OPEN_ITEM_STATUSES))
    with rt.db.transaction() as s:
        items = rt.review.list_items(s, viewer=reviewer, queue=queue, statuses=statuses)
    if as_json:
        emit([_item_summary(i.as_dict()) for i in items], True)
        return Exit.OK
    from rich import box

    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("item", "queue", "kind", "status", "prio", "due UTC", "top score"):
        t.add_column(name, no_wrap=True)
    for i in items:
        top = max(i.scores.items(), key=lambda kv: kv[1], default=("-", 0.0))
        t.add_row(str(i.id), i.queue, i.kind, i.status, str(i.priority),
                  i.due_at.strftime("%m-%d %H:%M"), f"{top[0]} {top[1]:.2f}")
    out.print(t)
    return Exit.OK


def _item_summary(d: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "kind", "queue", "status", "severity", "priority", "reviewers_required",
            "verdicts_in", "account_id", "content_sha256", "decision_id", "outcome", "scores",
            "due_at", "claimed_by", "lease_expires_at", "proposed_actions")
    return {k: d[k] for k in keep}


@app.command("show")
@guarded
def review_show(
    item: int,
    reviewer: Annotated[str | None, typer.Option(help="As this reviewer sees it.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Show one item: scores, reasons, context (and verdicts once it is closed)."""
    rt = runtime()
    with rt.db.transaction() as s:
        view = rt.review.show(s, item, viewer=reviewer)
    if as_json:
        emit(view.as_dict(), True)
    else:
        from pipeline.cli._render import item_panel

        out.print(item_panel(view.as_dict()))
    return Exit.OK


@app.command("claim")
@guarded
def review_claim(
    reviewer: Annotated[str, typer.Option(help="Who claims.")],
    queue: Annotated[str | None, typer.Option(help="From this queue only.")] = None,
    item: Annotated[int | None, typer.Option(help="This item only.")] = None,
    count: Annotated[int | None, typer.Option(
        min=1, max=MAX_CLAIM_BATCH,
        help="Lease up to this many items at once (prints a list; --json: {\"items\": [...]})."
    )] = None,
    as_json: JsonOpt = False,
) -> int:
    """Take a lease on the most urgent item in the reviewer's queues (or on --count of them)."""
    rt = runtime()
    views = rt.desk.claim_many(reviewer_id=reviewer, queue=queue, item_id=item,
                               limit=count or 1)
    if as_json:
        emit(views[0].as_dict() if count is None else {"items": [v.as_dict() for v in views]},
             True)
    else:
        for view in views:
            out.print(f"claimed item [bold]{view.id}[/bold] in queue {view.queue} until "
                      f"{view.lease_expires_at:%H:%M:%S} UTC; proposed: "
                      f"{', '.join(view.proposed_actions) or 'none'}", highlight=False)
    return Exit.OK


@app.command("release")
@guarded
def review_release(item: int, reviewer: Annotated[str, typer.Option()],
                   as_json: JsonOpt = False) -> int:
    """Give a claimed item back to its queue."""
    rt = runtime()
    with rt.db.transaction() as s:
        rt.review.release(s, item_id=item, reviewer_id=reviewer)
    emit({"item": item, "released": True} if as_json else
         f"released item {item}: it is back in its queue", as_json)
    return Exit.OK


@app.command("decide")
@guarded
def review_decide(
    item: int,
    reviewer: Annotated[str, typer.Option(help="Who decides (must hold the lease).")],
    verdict: Annotated[str, typer.Option(help="violating | benign | benign_medical | "
                                              "need_more_context")],
    category: Annotated[list[str] | None, typer.Option(help="Violated category, repeatable.")]
    = None,
    note: Annotated[str, typer.Option(help="The reviewer's note.")] = "",
    as_json: JsonOpt = False,
) -> int:
    """Record a verdict; the policy turns it into proposed/approved actions.  It is recorded
    through this operator account (`os:user@host`, as a delegate for --reviewer): one operator
    account supplies at most one verdict of a two-person item."""
    from pipeline.auth import operator
    from review import verdict_credentials

    rt = runtime()
    op = operator.current()  # acts for --reviewer, as a delegate, through its own account
    with rt.db.transaction() as s:
        operator.require_another_person(op, verdict_credentials(s, item_id=item))
        res = rt.review.decide(s, item_id=item, reviewer_id=reviewer, verdict=verdict,
                               categories=category or [], note=note,
                               credential=op.credential, delegate=True)
    d = {"item": res.item_id, "status": str(res.status), "verdict_id": res.verdict_id,
         "actions": res.actions, "escalated_to": res.escalated_to}
    if as_json:
        emit(d, True)
    else:
        out.print(f"item {res.item_id}: [bold]{res.status}[/bold]", highlight=False)
        for a in res.actions:
            out.print(f"  action {a['id']}: {a['kind']} → {a['status']}"
                      + (f" (not before {a['not_before']})" if a["not_before"] else ""),
                      highlight=False)
        if res.escalated_to:
            out.print(f"  reviewers disagreed: escalated to item {res.escalated_to}")
    return Exit.OK


@app.command("stats")
@guarded
def review_stats(
    days: Annotated[int, typer.Option(
        min=1, max=3650, help="The false-positive rate's window: verdicts of the last DAYS "
        "days.")] = 30,
    as_json: JsonOpt = False,
) -> int:
    """Depth, oldest age and SLA breaches per queue; the false-positive rate (flagged uploads
    people found benign) per queue and per context segment."""
    from pipeline.learning.segments import (
        false_positive_rates,
        false_positive_rates_by_queue,
        read_flagged,
    )

    rt = runtime()
    since = rt.review.clock() - dt.timedelta(days=days)
    with rt.db.transaction() as s:
        rows = rt.review.stats(s)
        flagged = read_flagged(s, since=since)
    by_queue = false_positive_rates_by_queue(flagged)
    segments = false_positive_rates(flagged)
    for r in rows:
        fp = by_queue.get(r["queue"])
        r["flagged_decided"] = fp.decided if fp else 0
        r["false_positives"] = fp.benign if fp else 0
        r["fp_rate"] = fp.as_dict()["rate"] if fp else None
    if as_json:
        emit({"queues": rows, "false_positives": {
            "window_days": days, "since": since.isoformat(),
            "definition": "of the uploads the policy flagged that people decided, the share "
                          "they found benign (benign or benign_medical)",
            "segments": [x.as_dict() for x in segments]}}, True)
        return Exit.OK
    t = Table("queue", "depth", "claimed", "oldest (s)", "breaches", "SLA (h)",
              f"decided ({days} d)", "FP rate")
    for r in rows:
        t.add_row(r["queue"], str(r["depth"]), str(r["claimed"]), f"{r['oldest_age_s']:.0f}",
                  str(r["breaches"]), f"{(r['sla_s'] or 0) / 3600:.0f}",
                  str(r["flagged_decided"]), _rate(r["fp_rate"]))
    out.print(t)
    f = Table("segment", "flagged, decided", "found benign", "FP rate",
              title=f"False positives by context segment, last {days} days")
    for x in segments:
        f.add_row(x.segment, str(x.decided), str(x.benign), _rate(x.rate))
    out.print(f)
    return Exit.OK


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


@app.command("diagram")
@guarded
def review_diagram() -> int:
    """Print the review state machine as Mermaid (generated from the transition table)."""
    from review import mermaid_diagram

    sys.stdout.write(mermaid_diagram() + "\n")
    return Exit.OK


@app.command("appeal")
@guarded
def review_appeal(
    decision: str,
    statement: Annotated[str, typer.Option(help="The user's own words and context.")],
    as_json: JsonOpt = False,
) -> int:
    """File a user's appeal: a reviewer who did not decide it before looks again."""
    rt = runtime()
    with rt.db.transaction() as s:
        appeal_id = rt.review.appeal(s, decision_id=decision, statement=statement)
    emit({"appeal_id": appeal_id, "decision_id": decision} if as_json else
         f"appeal {appeal_id} filed for decision {decision}: a reviewer who did not decide it "
         f"before will look again (lookfirst decisions show {decision})", as_json)
    return Exit.OK


# ---- decide-bulk: one verdict for every open copy of an image, or one account's burst ----------
class By(enum.StrEnum):
    sha256 = "sha256"  # every open upload of the same image
    account = "account"  # one account's upload burst around the item
    pdq = "pdq"  # the item's cluster: near-duplicates (PDQ) in its queue


_GROUP = {By.sha256: "sha256", By.account: "account_burst", By.pdq: "pdq"}


@app.command("decide-bulk")
@guarded
def review_decide_bulk(
    item: Annotated[int, typer.Argument(help="The item whose lease the reviewer holds.")],
    reviewer: Annotated[str, typer.Option(help="Who decides (must hold the lease on ITEM).")],
    verdict: Annotated[str, typer.Option(help="violating | benign | benign_medical")],
    category: Annotated[list[str] | None, typer.Option(help="Violated category, repeatable.")]
    = None,
    by: Annotated[By, typer.Option(help="Group by the same image, by the account's "
                                        "upload burst, or by the item's PDQ cluster.")]
    = By.sha256,
    window_minutes: Annotated[int, typer.Option(min=1, max=7 * 24 * 60, help="With --by "
                                                "account: uploads this close to ITEM's.")] = 60,
    note: Annotated[str, typer.Option(help="The reviewer's note, on every verdict.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many items.")] = 200,
    as_json: JsonOpt = False,
) -> int:
    """Decide ITEM and every other open item you may claim with the same image (or from the
    same account's burst) with one verdict; two-person items get your one verdict each."""
    from pipeline.auth import operator
    from review import verdict_credentials

    rt = runtime()
    op = operator.current()  # acts for --reviewer, as a delegate, through its own account
    with rt.db.transaction() as s:
        operator.require_another_person(op, verdict_credentials(s, item_id=item))
        results = rt.review.decide_bulk(
            s, item_id=item, reviewer_id=reviewer, verdict=verdict,
            categories=category or [], note=note, group=_GROUP[by],
            burst_window=dt.timedelta(minutes=window_minutes), limit=limit,
            credential=op.credential, delegate=True,
        )
    items: list[dict[str, Any]] = [
        {"item": r.item_id, "status": str(r.status), "verdict_id": r.verdict_id,
         "actions": r.actions, "escalated_to": r.escalated_to}
        for r in results
    ]
    if as_json:
        emit({"anchor": item, "group": _GROUP[by], "items": items}, True)
    else:
        out.print(f"{len(items)} item(s) decided with one verdict ({verdict}):",
                  highlight=False)
        for d in items:
            kinds = ", ".join(f"{a['kind']} → {a['status']}" for a in d["actions"])
            out.print(f"  item {d['item']}: [bold]{d['status']}[/bold]"
                      + (f"  ({kinds})" if kinds else ""), highlight=False)
    return Exit.OK
