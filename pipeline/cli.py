"""The `lookfirst` command line: scoring, the review queue, actions, appeals, audit, policy, db.

Exit codes: 0 ok, 1 a check failed (audit verify), 2 the user's input was refused,
3 an external dependency (database, model, webhook) is unavailable.  `--json` output is for
scripts; errors are one JSON object `{"error": {"code", "detail"}}` with --json, a red line
otherwise, never a traceback.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

import enum  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, NoReturn, TypeVar  # noqa: E402

import typer  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from models.errors import ModelError  # noqa: E402
from pipeline.errors import ConfigurationError, PipelineError  # noqa: E402
from pipeline.policy import Context, load_policy  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from review.errors import AuditChainBroken, ReviewError  # noqa: E402
from review.service import MAX_CLAIM_BATCH  # noqa: E402

log = logging.getLogger(__name__)


class Exit(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USER_ERROR = 2
    DEPENDENCY = 3


out = Console()
err = Console(stderr=True)
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
review_app = typer.Typer(no_args_is_help=True, help="The human review queue.")
actions_app = typer.Typer(no_args_is_help=True, help="Actions: proposed, approved, executed.")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
policy_app = typer.Typer(no_args_is_help=True, help="Moderation policies.")
db_app = typer.Typer(no_args_is_help=True, help="The database of record.")
reviewers_app = typer.Typer(no_args_is_help=True, help="Reviewers and their queues.")
decisions_app = typer.Typer(no_args_is_help=True, help="Decisions and statements of reasons.")
outbox_app = typer.Typer(no_args_is_help=True, help="Messages waiting for the platform.")
banks_app = typer.Typer(no_args_is_help=True, help="Hash banks: violating and cleared_benign.")
app.add_typer(review_app, name="review")
app.add_typer(actions_app, name="actions")
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")
app.add_typer(db_app, name="db")
app.add_typer(reviewers_app, name="reviewers")
app.add_typer(decisions_app, name="decisions")
app.add_typer(outbox_app, name="outbox")
app.add_typer(banks_app, name="banks")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
T = TypeVar("T")


def _fail(code: str, detail: str, exit_code: int, as_json: bool) -> NoReturn:
    if as_json:
        out.print_json(json.dumps({"error": {"code": code, "detail": detail}}))
    else:
        err.print(f"[red]error[/red] [bold]{code}[/bold]: {detail}", highlight=False)
    raise typer.Exit(exit_code)


def guarded(fn: Callable[[], T], *, as_json: bool = False) -> T:
    """Run a command body and map our errors to exit codes (no traceback reaches the user)."""
    try:
        return fn()
    except (PipelineError, ReviewError) as exc:
        _fail(exc.code, exc.detail, exc.exit_code, as_json)
    except ModelError as exc:
        _fail(exc.code, exc.detail, Exit.DEPENDENCY, as_json)
    except OperationalError as exc:
        log.debug("database unavailable", exc_info=True)
        _fail("dependency.database", f"the database is unavailable ({type(exc.orig).__name__})",
              Exit.DEPENDENCY, as_json)
    except ValidationError as exc:
        _fail("config.invalid", str(exc).splitlines()[0], Exit.USER_ERROR, as_json)


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigurationError(
            f"LOOKFIRST_{str(first['loc'][0]).upper()}: {first['msg']}"
        ) from None


def runtime() -> Runtime:
    rt = Runtime(settings())
    rt.db.upgrade()  # idempotent: a fresh laptop needs no separate step
    return rt


def emit(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    else:
        out.print(obj)


# ---- scoring ----------------------------------------------------------------------------------
@app.command()
def score(
    paths: Annotated[list[Path], typer.Argument(help="Image files to score.")],
    context: Annotated[
        list[str] | None, typer.Option("--context", "-c", help="key=value, repeatable.")
    ] = None,
    account: Annotated[str, typer.Option(help="The uploading account.")] = "acct-local",
    upload_id: Annotated[
        str | None, typer.Option(help="The platform's upload id (default: from the file).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score images with their context, route them, and print one result per image."""
    from pipeline.scoring import Orchestrator, UploadRequest

    def body() -> int:
        ctx = Context.from_pairs(context or [])
        if upload_id is not None and len(paths) > 1:
            raise PipelineError("--upload-id names one upload; give one path")
        rt = runtime()
        reqs = [
            UploadRequest(
                account_id=account,
                external_id=upload_id or f"file:{p.resolve()}",
                context=ctx,
                source="cli",
                path=p,
                label=str(p),
            )
            for p in paths
        ]
        with Orchestrator(rt) as orch:
            results = orch.score(reqs)
        failed = 0
        for r in results:
            failed += not r.ok
            if as_json:
                emit(r.as_dict(), True)
            else:
                _print_scored(r.as_dict())
        return Exit.USER_ERROR if failed else Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


def _print_scored(d: dict[str, Any]) -> None:
    if "error" in d:
        err.print(f"[red]✗[/red] {d['input']}: [bold]{d['error']['code']}[/bold] "
                  f"{d['error']['detail']}", highlight=False)
        return
    colour = {"allow": "green", "hold": "yellow", "review": "magenta"}[d["outcome"]]
    top = sorted(d["scores"].items(), key=lambda kv: -kv[1])[:3]
    scores = ", ".join(f"{k} {v:.2f}" for k, v in top)
    where = f" → queue [bold]{d['queue']}[/bold] item {d['review_item_id']}" if d["queue"] else ""
    again = " (already scored)" if d["already_scored"] else ""
    out.print(f"[{colour}]{d['outcome']:<6}[/{colour}] {d['input']}{where}{again}\n"
              f"        {scores}  [dim]{d['model_version']} · policy {d['policy_version']}[/dim]",
              highlight=False)
    for note in d["reasons"].get("routing", []):
        out.print(f"        [dim]· {note}[/dim]", highlight=False)


@app.command()
def batch(
    manifest: Annotated[Path, typer.Argument(help="JSONL: path, upload_id, account_id, context.")],
    output: Annotated[Path | None, typer.Option("--out", help="Write results as JSONL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score every image of a manifest (the batch job), with a progress bar."""
    from rich.progress import Progress

    from pipeline.scoring import Orchestrator

    def body() -> int:
        rt = runtime()
        reqs = list(read_manifest(manifest))
        counts: dict[str, int] = {}
        sink = open(output, "w") if output else None  # noqa: SIM115
        try:
            with Orchestrator(rt) as orch, Progress(console=err, transient=as_json) as bar:
                task = bar.add_task("scoring", total=len(reqs))
                for r in orch.iter_score(reqs):
                    d = r.as_dict()
                    key = d["error"]["code"] if "error" in d else d["outcome"]
                    counts[key] = counts.get(key, 0) + 1
                    if sink:
                        sink.write(json.dumps(d, default=str) + "\n")
                    if as_json:
                        emit(d, True)
                    else:
                        bar.console.print(f"{key:<8} {d['input']}"
                                          + (f" → {d['queue']}" if d.get("queue") else ""),
                                          highlight=False)
                    bar.advance(task)
        finally:
            if sink:
                sink.close()
        if not as_json:
            out.print("summary: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


def read_manifest(path: Path) -> Iterator[Any]:
    """Manifest rows: {"path", "upload_id", "account_id", "context"}; paths are relative to
    the manifest's folder."""
    from pipeline.scoring import UploadRequest

    if not path.is_file():
        raise PipelineError(f"no such manifest: {path}")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            p = path.parent / row["path"]
            yield UploadRequest(
                account_id=str(row.get("account_id", "acct-local")),
                external_id=str(row.get("upload_id") or f"file:{p.resolve()}"),
                context=Context.parse(row.get("context", {})),
                source="batch",
                path=p,
                label=str(row["path"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PipelineError(f"{path} line {n}: {type(exc).__name__}: {exc}") from None


# ---- review -----------------------------------------------------------------------------------
@review_app.command("list")
def review_list(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
    reviewer: Annotated[str | None, typer.Option(help="As this reviewer sees it.")] = None,
    include_closed: Annotated[bool, typer.Option("--all", help="Include decided items.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List review items, most urgent first."""
    from review.states import OPEN_ITEM_STATUSES

    def body() -> int:
        rt = runtime()
        statuses = status or (None if include_closed else sorted(OPEN_ITEM_STATUSES))
        with rt.db.transaction() as s:
            items = rt.review.list_items(s, viewer=reviewer, queue=queue, statuses=statuses)
        if as_json:
            emit([_item_summary(i.as_dict()) for i in items], True)
            return Exit.OK
        t = Table("item", "queue", "kind", "status", "prio", "due", "outcome", "top score")
        for i in items:
            top = max(i.scores.items(), key=lambda kv: kv[1], default=("-", 0.0))
            t.add_row(str(i.id), i.queue, i.kind, i.status, str(i.priority),
                      i.due_at.strftime("%Y-%m-%d %H:%M"), i.outcome, f"{top[0]} {top[1]:.2f}")
        out.print(t)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


def _item_summary(d: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "kind", "queue", "status", "severity", "priority", "reviewers_required",
            "verdicts_in", "account_id", "content_sha256", "decision_id", "outcome", "scores",
            "due_at", "claimed_by", "lease_expires_at", "proposed_actions")
    return {k: d[k] for k in keep}


@review_app.command("show")
def review_show(
    item: int,
    reviewer: Annotated[str | None, typer.Option(help="As this reviewer sees it.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one item: scores, reasons, context (and verdicts once it is closed)."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            view = rt.review.show(s, item, viewer=reviewer)
        emit(view.as_dict(), as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@review_app.command("claim")
def review_claim(
    reviewer: Annotated[str, typer.Option(help="Who claims.")],
    queue: Annotated[str | None, typer.Option(help="From this queue only.")] = None,
    item: Annotated[int | None, typer.Option(help="This item only.")] = None,
    count: Annotated[int | None, typer.Option(
        min=1, max=MAX_CLAIM_BATCH,
        help="Lease up to this many items at once (prints a list; --json: {\"items\": [...]})."
    )] = None,
    as_json: JsonOpt = False,
) -> None:
    """Take a lease on the most urgent item in the reviewer's queues (or on --count of them)."""

    def body() -> int:
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

    raise typer.Exit(guarded(body, as_json=as_json))


@review_app.command("release")
def review_release(item: int, reviewer: Annotated[str, typer.Option()],
                   as_json: JsonOpt = False) -> None:
    """Give a claimed item back to its queue."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            rt.review.release(s, item_id=item, reviewer_id=reviewer)
        emit({"item": item, "released": True}, as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@review_app.command("decide")
def review_decide(
    item: int,
    reviewer: Annotated[str, typer.Option(help="Who decides (must hold the lease).")],
    verdict: Annotated[str, typer.Option(help="violating | benign | benign_medical | "
                                              "need_more_context")],
    category: Annotated[list[str] | None, typer.Option(help="Violated category, repeatable.")]
    = None,
    note: Annotated[str, typer.Option(help="The reviewer's note.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Record a verdict; the policy turns it into proposed/approved actions."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            res = rt.review.decide(s, item_id=item, reviewer_id=reviewer, verdict=verdict,
                                   categories=category or [], note=note)
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

    raise typer.Exit(guarded(body, as_json=as_json))


@review_app.command("stats")
def review_stats(as_json: JsonOpt = False) -> None:
    """Depth, oldest age and SLA breaches per queue."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            rows = rt.review.stats(s)
        if as_json:
            emit(rows, True)
            return Exit.OK
        t = Table("queue", "depth", "claimed", "oldest (s)", "breaches", "SLA (h)")
        for r in rows:
            t.add_row(r["queue"], str(r["depth"]), str(r["claimed"]), f"{r['oldest_age_s']:.0f}",
                      str(r["breaches"]), f"{(r['sla_s'] or 0) / 3600:.0f}")
        out.print(t)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@review_app.command("diagram")
def review_diagram() -> None:
    """Print the review state machine as Mermaid (generated from the transition table)."""
    from review.states import mermaid_diagram

    sys.stdout.write(mermaid_diagram() + "\n")


@review_app.command("appeal")
def review_appeal(
    decision: str,
    statement: Annotated[str, typer.Option(help="The user's own words and context.")],
    as_json: JsonOpt = False,
) -> None:
    """File a user's appeal: a reviewer who did not decide it before looks again."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            appeal_id = rt.review.appeal(s, decision_id=decision, statement=statement)
        emit({"appeal_id": appeal_id, "decision_id": decision}, as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


# ---- reviewers --------------------------------------------------------------------------------
@reviewers_app.command("add")
def reviewers_add(
    reviewer: str,
    queue: Annotated[list[str], typer.Option(help="A queue they may work, repeatable.")],
    role: Annotated[list[str] | None, typer.Option(help="A role, e.g. senior, medical.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a reviewer (or grant more queues/roles)."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            rt.review.add_reviewer(s, reviewer_id=reviewer, queues=queue, roles=role or [])
            rows = [r for r in rt.review.list_reviewers(s) if r["id"] == reviewer]
        emit(rows[0], as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@reviewers_app.command("list")
def reviewers_list(as_json: JsonOpt = False) -> None:
    """List reviewers, their queues and roles."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            emit(rt.review.list_reviewers(s), as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


# ---- actions ----------------------------------------------------------------------------------
@actions_app.command("list")
def actions_list(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    decision: Annotated[str | None, typer.Option(help="Only this decision.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List actions and where they stand."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            rows = rt.review.list_actions(s, status=status, decision_id=decision)
        if as_json:
            emit(rows, True)
            return Exit.OK
        t = Table("id", "kind", "target", "status", "approvers", "not before", "account")
        for a in rows:
            t.add_row(str(a["id"]), a["kind"], a["target"], a["status"],
                      ", ".join(a["approvers"]) or "-", a["not_before"] or "-", a["account_id"])
        out.print(t)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@actions_app.command("execute")
def actions_execute(
    action: Annotated[int | None, typer.Argument(help="One action; default: all that are due.")]
    = None,
    actor: Annotated[str, typer.Option(help="Who runs the executor.")] = "cli:executor",
    as_json: JsonOpt = False,
) -> None:
    """Execute approved actions (through the outbox).  A proposal is refused."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            if action is not None:
                done = [rt.review.execute(s, action_id=action, actor=actor)]
            else:
                done = rt.review.execute_due(s, actor=actor)
            rows = [{"id": a.id, "kind": a.kind, "status": a.status} for a in done]
        if as_json:
            emit(rows, True)
        else:
            for r in rows:
                out.print(f"executed action {r['id']}: {r['kind']}", highlight=False)
            if not rows:
                out.print("nothing is due")
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


# ---- decisions --------------------------------------------------------------------------------
@decisions_app.command("show")
def decisions_show(decision: str, as_json: JsonOpt = False) -> None:
    """The statement of reasons: what was detected, by which model and policy, what context
    moved the thresholds, who reviewed, what was decided, how to appeal."""

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            emit(rt.review.statement_of_reasons(s, decision), as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


# ---- audit, policy, db ------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Recompute the hash chains; exit 1 at the first break."""
    from review import audit

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            report = audit.verify(s)
        d = {"ok": report.ok, "events": report.events, "chains": report.chains,
             "problem": report.problem, "at_chain": report.at_chain, "at_seq": report.at_seq}
        if not report.ok:
            if as_json:
                emit({**d, "error": {"code": AuditChainBroken.code, "detail": report.problem}},
                     True)
                return Exit.CHECK_FAILED
            raise AuditChainBroken(
                f"{report.problem} (chain {report.at_chain}, at event {report.at_seq})")
        if as_json:
            emit(d, True)
        else:
            out.print(f"[green]audit chain verifies[/green]: {report.events} events in "
                      f"{report.chains} chains")
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@policy_app.command("validate")
def policy_validate(path: Path, as_json: JsonOpt = False) -> None:
    """Load and validate a policy file; errors name the field and line."""

    def body() -> int:
        p = load_policy(path)
        d = {"ok": True, "name": p.name, "version": p.version,
             "categories": sorted(p.categories), "queues": sorted(p.queues)}
        if as_json:
            emit(d, True)
        else:
            out.print(f"[green]valid[/green]: policy {p.name} version {p.version}, "
                      f"{len(p.categories)} categories, {len(p.queues)} queues", highlight=False)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@policy_app.command("backtest")
def policy_backtest(
    candidate: Annotated[Path, typer.Argument(help="The candidate policy file.")],
    as_json: JsonOpt = False,
) -> None:
    """Replay stored scores and contexts under a candidate policy: what would change."""
    from pipeline.backtest import backtest

    def body() -> int:
        rt = runtime()
        cand = load_policy(candidate)
        with rt.db.transaction() as s:
            report = backtest(s, current=rt.policy, candidate=cand)
        d = report.as_dict()
        if as_json:
            emit(d, True)
            return Exit.OK
        out.print(f"backtest of [bold]{d['candidate']}[/bold] on {d['decisions']} stored "
                  f"decisions (in force: {d['current']})", highlight=False)
        t = Table("recorded outcome", "candidate outcome", "decisions")
        for row in d["transitions"]:
            style = "" if row["now"] == row["candidate"] else "bold"
            t.add_row(row["now"], row["candidate"], str(row["count"]), style=style)
        out.print(t)
        q = Table("queue", "volume now", "volume under candidate")
        for name, v in d["queue_volume"].items():
            q.add_row(name, str(v["now"]), str(v["candidate"]))
        out.print(q)
        h = d["human_labels"]
        out.print(f"decided by people: {h['violating']} violating, {h['benign']} benign; the "
                  f"candidate would allow {h['violating_now_allowed']} violating (false "
                  f"negatives) and flag {h['benign_now_flagged']} benign (held: "
                  f"{h['benign_now_held']})", highlight=False)
        m = d["medical_sharing"]
        out.print(f"medically shared uploads: {m['total']}; flagged now {m['flagged_now']}, "
                  f"under candidate {m['flagged_candidate']}", highlight=False)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@banks_app.command("import")
def banks_import(
    path: Annotated[Path, typer.Argument(help="One sha256 per line ('#' comments allowed).")],
    bank: Annotated[str, typer.Option(help="violating | cleared_benign")] = "violating",
    source: Annotated[str | None, typer.Option(help="Where the list came from.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a hash list; a match routes content before its scores matter."""
    from review import banks

    def body() -> int:
        if not path.is_file():
            raise PipelineError(f"no such file: {path}")
        rt = runtime()
        with rt.db.transaction() as s, open(path) as fh:
            added, present = banks.import_hashes(
                s, fh, bank=bank, source=source or path.name, actor="cli:banks",
                at=rt.review.clock(),
            )
        emit({"bank": bank, "added": added, "already_present": present}, as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@banks_app.command("list")
def banks_list(bank: Annotated[str | None, typer.Option()] = None,
               as_json: JsonOpt = False) -> None:
    """The newest bank entries."""
    from review import banks

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            emit(banks.list_entries(s, bank=bank), as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Apply the migrations (SQLite or PostgreSQL, the same ones)."""
    from review.db import current_revision

    def body() -> int:
        rt = runtime()
        emit({"ok": True, "revision": current_revision(rt.db.engine), **rt.describe()}, as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


# ---- delivery to the platform -----------------------------------------------------------------
@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="One pass, then exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 1.0,
    execute_due: Annotated[bool, typer.Option(help="Also execute approved actions that are "
                                                   "due.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Deliver the outbox to the platform's webhook (signed, idempotent, retried)."""
    import time

    from pipeline.delivery import platform_worker

    def body() -> int:
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

    raise typer.Exit(guarded(body, as_json=as_json))


@outbox_app.command("status")
def outbox_status(as_json: JsonOpt = False) -> None:
    """Backlog per status (pending, delivered, dead)."""
    from review.outbox import backlog

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            emit(backlog(s), as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


@outbox_app.command("list")
def outbox_list(status: Annotated[str | None, typer.Option()] = None,
                as_json: JsonOpt = False) -> None:
    """The newest outbox rows (dead letters with --status dead)."""
    from review.outbox import list_rows

    def body() -> int:
        rt = runtime()
        with rt.db.transaction() as s:
            emit(list_rows(s, status=status), as_json)
        return Exit.OK

    raise typer.Exit(guarded(body, as_json=as_json))


from pipeline.cli_api import register as _register_api  # noqa: E402

_register_api(app)

from pipeline.cli_labelstudio import register as _register_labelstudio  # noqa: E402

_register_labelstudio(app)

from pipeline.cli_review_bulk import register as _register_review_bulk  # noqa: E402

_register_review_bulk(app)

from pipeline.cli_models import register as _register_models  # noqa: E402

_register_models(app)


def main() -> None:
    try:
        level = Settings().log_level
    except ValidationError:
        level = "WARNING"  # the command itself reports the bad setting
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
