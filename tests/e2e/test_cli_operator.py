"""Issue 16 at the CLI: `lookfirst review decide` acts as the operator running it (the kernel's
effective uid and the host; the sudo caller when root runs it through sudo), as a delegate for
--reviewer.  One operator account supplies at most one verdict of a two-person item; a second
operator account can confirm.  Real subprocesses, a real SQLite database; the severe item is
recorded through the review service (no model needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipeline.auth import operator
from pipeline.runtime import Runtime
from pipeline.settings import Settings
from review.schema import AuditEvent, VerdictRow
from tests.review_support import ACTIONS, record

ROOT = Path(__file__).resolve().parents[2]
LOOKFIRST = Path(sys.executable).parent / "lookfirst"


def run(env: dict[str, str], *args: str, expect: int = 0) -> Any:
    proc = subprocess.run([str(LOOKFIRST), *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
    e.pop("SUDO_USER", None)
    e.update(LOOKFIRST_DATA_DIR=str(tmp_path / "data"), ORT_DISABLE_TELEMETRY="1")
    subprocess.run([str(LOOKFIRST), "db", "upgrade"], env=e, check=True, capture_output=True,
                   timeout=300, cwd=ROOT)
    return e


def _severe_item(env: dict[str, str]) -> int:
    rt = Runtime(Settings(data_dir=Path(env["LOOKFIRST_DATA_DIR"])))
    try:
        with rt.db.transaction() as s:
            for r in ("sam", "sue"):
                rt.review.add_reviewer(s, reviewer_id=r, queues=["severe"], roles=["senior"])
            item = record(rt.review, s, "cli-1", queue="severe", severity="critical",
                          reviewers_required=2, proposed=ACTIONS["critical"]).item_id
        assert item is not None
        return item
    finally:
        rt.close()


def _verdicts(env: dict[str, str], item: int) -> list[tuple[str, str, bool]]:
    rt = Runtime(Settings(data_dir=Path(env["LOOKFIRST_DATA_DIR"])))
    try:
        with rt.db.transaction() as s:
            rows = s.execute(select(VerdictRow).where(VerdictRow.item_id == item)
                             .order_by(VerdictRow.id)).scalars().all()
            events = s.execute(select(AuditEvent).where(AuditEvent.event == "verdict.recorded")
                               ).scalars().all()
            assert [e.data["credential"] for e in events] == [v.credential for v in rows]
            return [(v.reviewer_id, v.credential, v.via_delegate) for v in rows]
    finally:
        rt.close()


def _as(env: dict[str, str], person: str | None) -> dict[str, str]:
    """The environment of an operator: as root, the sudo caller names the person."""
    return {**env, "SUDO_USER": person} if person else dict(env)


def _decide(env: dict[str, str], item: int, reviewer: str, expect: int = 0,
            claim: bool = True) -> Any:
    if claim:
        run(env, "review", "claim", "--reviewer", reviewer, "--item", str(item))
    return run(env, "review", "decide", str(item), "--reviewer", reviewer, "--verdict",
               "violating", "--category", "nudity.explicit", expect=expect)


def test_one_operator_account_supplies_at_most_one_of_two_verdicts(env: dict[str, str]) -> None:
    item = _severe_item(env)
    root = os.geteuid() == 0
    me = _as(env, "alice" if root else None)  # as root without sudo: a shared account
    first = _decide(me, item, "sam")
    assert first["status"] == "awaiting_second"
    person = "alice" if root else operator.current().person
    host = socket.gethostname()
    assert _verdicts(env, item) == [("sam", f"os:{person}@{host}", True)]
    # the same operator account, naming the second reviewer: refused, nothing recorded
    refused = _decide(me, item, "sue", expect=2)
    assert refused["error"]["code"] in ("auth.same_operator", "review.same_credential")
    assert len(_verdicts(env, item)) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="a second operator account needs root's sudo "
                    "caller here (CI and the development machine run as root)")
def test_a_second_operator_account_confirms(env: dict[str, str]) -> None:
    item = _severe_item(env)
    assert _decide(_as(env, "alice"), item, "sam")["status"] == "awaiting_second"
    # root itself is a shared role account: never the second person
    refused = _decide(_as(env, None), item, "sue", expect=2)
    assert refused["error"]["code"] == "auth.same_operator"
    done = _decide(_as(env, "bob"), item, "sue", claim=False)  # sue's lease from before
    assert done["status"] == "decided"
    assert {a["status"] for a in done["actions"]} <= {"approved", "notified", "cancelled"}
    host = socket.gethostname()
    assert _verdicts(env, item) == [("sam", f"os:alice@{host}", True),
                                    ("sue", f"os:bob@{host}", True)]
    # executing records the operator account too, whatever --actor says
    remove = next(a for a in done["actions"] if a["kind"] == "remove_content")
    run(_as(env, "carol"), "actions", "execute", str(remove["id"]), "--actor", "anyone")
    rt = Runtime(Settings(data_dir=Path(env["LOOKFIRST_DATA_DIR"])))
    try:
        with rt.db.transaction() as s:
            ev = s.execute(select(AuditEvent).where(
                AuditEvent.event == "action.execute",
                AuditEvent.subject_id == str(remove["id"]))).scalars().one()
    finally:
        rt.close()
    assert ev.actor == "anyone" and ev.data["credential"] == f"os:carol@{host}"
