"""What the CLI prints for people (never with --json): tables and panels instead of Python
reprs.  `render` turns any record (a dict, a list of dicts) into a table; the review item and
the statement of reasons get panels of their own, written as a person reads them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DASH = "–"


def when(value: Any, short: bool = False) -> str:
    """An ISO date-time as a person reads it (UTC, to the second; `short`: to the minute,
    for table cells whose header says UTC)."""
    if value is None:
        return DASH
    try:
        at = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if at.tzinfo is not None:
        at = at.astimezone(dt.UTC)
    if short:
        return at.strftime("%Y-%m-%d %H:%M")
    return at.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if at.tzinfo is not None else "")


def scalar(value: Any) -> str:
    """One value as text: no quotes, no None, lists and small mappings inline."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return when(value)
    if isinstance(value, str):
        if len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
            return when(value)
        return value
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={scalar(v)}" for k, v in value.items()) or DASH
    if isinstance(value, Sequence):
        return ", ".join(scalar(v) for v in value) or DASH
    return str(value)


def _simple(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(not isinstance(v, Mapping | list | tuple) for v in value.values())
    if isinstance(value, list | tuple):
        return all(not isinstance(v, Mapping | list | tuple) for v in value)
    return True


def cell(value: Any) -> RenderableType:
    """A table cell: text for simple values, a nested table for records."""
    if _simple(value):
        return Text(scalar(value))
    return render(value)


def fields_table(d: Mapping[str, Any], title: str | None = None) -> Table:
    """A record as two columns, field and value."""
    t = Table(box=box.SIMPLE_HEAD, show_header=False, title=title, title_justify="left",
              pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in d.items():
        t.add_row(str(k).replace("_", " "), cell(v))
    return t


def rows_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    """Records as rows, one column per field."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    t = Table(*[c.replace("_", " ") for c in cols], box=box.SIMPLE_HEAD, title=title,
              title_justify="left")
    for r in rows:
        t.add_row(*[cell(r.get(c)) for c in cols])
    return t


def render(obj: Any, title: str | None = None) -> RenderableType:
    """Any record as people read it."""
    if isinstance(obj, Mapping):
        return fields_table(obj, title)
    if isinstance(obj, list | tuple) and obj and all(isinstance(r, Mapping) for r in obj):
        return rows_table(obj, title)
    if isinstance(obj, list | tuple) and not obj:
        return Text("(none)", style="dim")
    return Text(scalar(obj))


# ---- the review item -----------------------------------------------------------------------
def _rules(rules: Sequence[Mapping[str, Any]], only_fired: bool = False) -> Table:
    t = Table(box=box.SIMPLE_HEAD, title="Rules (score against the threshold in force)",
              title_justify="left")
    t.add_column("rule", no_wrap=True)
    for name in ("score", "threshold", "fired"):
        t.add_column(name, no_wrap=True)
    t.add_column("moved by")
    for r in rules:
        if only_fired and not r.get("fired"):
            continue
        if r.get("threshold") is None:
            continue
        moved = ", ".join(f"{m['modifier']} {m['delta']:+g}" for m in r.get("moved_by") or ())
        if not only_fired and not r.get("fired") and not r.get("score"):
            continue  # a rule on a category the model did not see at all: noise
        base = r.get("base_threshold")
        threshold = scalar(r["threshold"])
        if base is not None and base != r["threshold"]:
            threshold += f" (base {scalar(base)})"
        t.add_row(r["rule"], scalar(r.get("score")), threshold,
                  "[bold red]yes[/bold red]" if r.get("fired") else "no", moved or DASH)
    return t


def _verdicts(verdicts: Sequence[Mapping[str, Any]], title: str) -> Table:
    t = Table("reviewer", "verdict", "categories", "note", "at (UTC)", box=box.SIMPLE_HEAD,
              title=title, title_justify="left")
    for v in verdicts:
        t.add_row(v["reviewer"], v["verdict"], scalar(v.get("categories")),
                  v.get("note") or DASH, when(v.get("at"), short=True))
    return t


def item_panel(d: Mapping[str, Any]) -> Panel:
    """`review show`: one review item as a reviewer reads it."""
    head = {
        "queue": d["queue"], "kind": d["kind"], "status": d["status"],
        "severity": d["severity"], "priority": d["priority"],
        "reviewers": f"{d['verdicts_in']} of {d['reviewers_required']} verdicts in",
        "due": when(d.get("due_at")), "claimed by": d.get("claimed_by"),
        "lease until": when(d.get("lease_expires_at")) if d.get("claimed_by") else None,
        "account": d["account_id"], "decision": d["decision_id"],
        "outcome (policy)": d["outcome"],
        "proposed actions": d.get("proposed_actions") or "none",
    }
    parts: list[RenderableType] = [fields_table({k: v for k, v in head.items() if v is not None})]
    if d.get("appeal_statement"):
        parts.append(Panel(d["appeal_statement"], title="The user's statement",
                           title_align="left"))
    scores = sorted(d.get("scores", {}).items(), key=lambda kv: -kv[1])
    parts.append(Text("Scores: " + ", ".join(f"{k} {v:.2f}" for k, v in scores), style="bold"))
    reasons = d.get("reasons") or {}
    if reasons.get("rules"):
        parts.append(_rules(reasons["rules"]))
    for note in reasons.get("routing") or ():
        parts.append(Text(f"· {note}", style="dim"))
    parts.append(Text("Context: " + scalar(d.get("context") or {})))
    if d.get("verdicts"):
        parts.append(_verdicts(d["verdicts"], "Verdicts"))
    return Panel(Group(*parts), title=f"Review item {d['id']}", title_align="left")


# ---- the statement of reasons ----------------------------------------------------------------
def statement_panel(d: Mapping[str, Any]) -> Panel:
    """`decisions show`: the statement of reasons as the person it concerns reads it."""
    up = d["upload"]
    parts: list[RenderableType] = [fields_table({
        "outcome": d["outcome"] + (f" (review queue {d['queue']})" if d.get("queue") else ""),
        "upload": f"{up['id']} from account {up['account_id']}, received "
                  f"{when(up['received_at'])}",
        "content": up["content_sha256"],
        "model": d["model_version"],
        "policy": d["policy_version"],
    })]
    detected = sorted((d.get("detected") or {}).items(), key=lambda kv: -kv[1])
    parts.append(Text("What the model detected: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in detected), style="bold"))
    if d.get("rules"):
        parts.append(_rules(d["rules"], only_fired=False))
    parts.append(Text("The context you gave: " + scalar(d.get("context") or {})))
    for note in d.get("context_effects") or ():
        parts.append(Text(f"· {note}", style="dim"))
    reviews = d.get("reviews") or []
    if reviews:
        t = Table("item", "kind", "queue", "status", "resolution", box=box.SIMPLE_HEAD,
                  title="Who reviewed it", title_justify="left")
        for r in reviews:
            t.add_row(str(r["item_id"]), r["kind"], r["queue"], r["status"],
                      r.get("resolution") or DASH)
        parts.append(t)
        for r in reviews:
            if r.get("verdicts"):
                parts.append(_verdicts(r["verdicts"], f"Verdicts on item {r['item_id']}"))
    else:
        parts.append(Text("No person has reviewed it (nothing was done to the account).",
                          style="dim"))
    if d.get("actions"):
        parts.append(actions_table(d["actions"], title="What was done"))
    if d.get("appeals"):
        t = Table("appeal", "status", "filed (UTC)", "statement", box=box.SIMPLE_HEAD,
                  title="Appeals", title_justify="left")
        for a in d["appeals"]:
            t.add_row(str(a["id"]), a["status"], when(a["filed_at"], short=True), a["statement"])
        parts.append(t)
    return Panel(Group(*parts), title=f"Statement of reasons · decision {d['decision_id']}",
                 title_align="left")


def how_to_appeal(d: Mapping[str, Any]) -> list[str]:
    """The statement's last lines: printed outside any panel, so the commands are never
    broken across lines and copy as they are."""
    how = d["how_to_appeal"]
    return [f"[bold]How to appeal[/bold] (until {when(how['until'])}; a reviewer who did not "
            "decide it before will look again):",
            f"  command line:  {how.get('cli', '')}",
            f"  API:           {how.get('api', how.get('how', ''))}"]


def actions_table(actions: Sequence[Mapping[str, Any]], title: str | None = None,
                  with_account: bool = False) -> Table:
    """Actions: what, on what, in which state, approved by whom, when."""
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    t.add_column("action", no_wrap=True)
    t.add_column("kind", min_width=14, overflow="fold")
    t.add_column("status", no_wrap=True)
    t.add_column("approved by", min_width=8)
    waits = any(a.get("not_before") for a in actions)  # a column only when one waits
    if waits:
        t.add_column("not before (UTC)", min_width=10)
    t.add_column("executed (UTC)", min_width=10)
    if with_account:
        t.add_column("account", min_width=8, overflow="fold")
    for a in actions:
        kind = a["kind"] + (" (irreversible)" if a.get("irreversible") else "")
        if a.get("reverses_action_id"):
            kind += f" (undoes {a['reverses_action_id']})"
        if a.get("target") and a.get("target") not in a["kind"]:
            kind += f" ({a['target']})"
        row = [str(a["id"]), kind, a["status"],
               scalar(a.get("approvers")),
               *([when(a.get("not_before"), short=True)] if waits else []),
               when(a.get("executed_at"), short=True)]
        t.add_row(*row, *([a.get("account_id") or DASH] if with_account else []))
    return t
