"""An operator's and a reviewer's first week, through the real CLI in subprocesses (issue 17):
the demo job's final hints work as printed, reviewers are managed queue by queue and role by
role, and every refusal says why and what to do, with its code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
LOOKFIRST = VENV / "bin" / "lookfirst"
ASTRONAUT = str(ROOT / "samples/astronaut.jpg")
pytestmark = pytest.mark.model


def clean_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: none of lookfirst's settings, this checkout's code."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
    e.update(PYTHONPATH=str(ROOT), ORT_DISABLE_TELEMETRY="1", LOOKFIRST_MODEL_THREADS="1",
             **extra)
    return e


def run(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(LOOKFIRST), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def js(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def refusal(proc: subprocess.CompletedProcess[str], code: str) -> str:
    body = js(proc)["error"]
    assert body["code"] == code, body
    return str(body["detail"])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(LOOKFIRST_DATA_DIR=str(tmp_path / "data"),
                     LOOKFIRST_POLICY_PATH=str(ROOT / "pipeline/policies/demo.yaml"),
                     LOOKFIRST_NOTICE_PERIOD_HOURS="0")


def test_the_demo_jobs_hints_show_the_demo_data(tmp_path: Path) -> None:
    """`make run`'s main job (scripts/run.sh without the services), then the commands its last
    lines print, pasted into a fresh shell in the checkout as a new user would."""
    data = tmp_path / "demo"
    job = subprocess.run(["bash", "scripts/run.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env=clean_env(LOOKFIRST_RUN_SERVICES="0",
                                                    LOOKFIRST_DATA_DIR=str(data),
                                                    VENV=str(VENV)))
    assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
    tail = job.stdout.split("\nDone.", 1)[1].split("\n", 1)[1]
    hints = [line.strip() for line in tail.splitlines() if line.startswith("  ")]
    assert hints[0].startswith("export LOOKFIRST_DATA_DIR=") and len(hints) >= 3, tail
    shell = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(hints)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=clean_env())
    assert shell.returncode == 0, (shell.stdout, shell.stderr)
    out = shell.stdout
    # review list --all: the demo's items (the decided face photos and the upheld appeal)
    assert "demo" in out and "appeals" in out and "decided" in out, out
    # decisions show: the statement of reasons, with both ways to appeal
    assert "lookfirst review appeal" in out and "POST /v1/appeals" in out, out
    # reviewers list: the demo's reviewers
    assert "dana" in out and "eli" in out, out
    # and nothing printed a Python dict
    assert "': " not in out, out


def test_reviewers_are_managed_queue_by_queue_and_role_by_role(env: dict[str, str]) -> None:
    added = run(env, "reviewers", "add", "bob", "--queue", "medical")
    assert "needs role 'medical', which 'bob' lacks" in added.stderr
    assert "lookfirst reviewers grant bob --role medical" in added.stderr
    bob = js(run(env, "reviewers", "show", "bob", "--json"))
    assert bob["queues"] == ["medical"] and bob["can_claim"] == []
    assert bob["blocked"] == [{"queue": "medical", "needs_role": "medical"}]

    # two items wait in the medical queue; bob's claim says why he gets none of them
    for account in ("acct-m1", "acct-m2"):
        scored = js(run(env, "score", ASTRONAUT, "--account", account, "--context",
                        "medical_sharing=true", "--json"))
        assert scored["queue"] == "medical"
    detail = refusal(run(env, "review", "claim", "--reviewer", "bob", "--json", expect=2),
                     "review.not_entitled")
    assert "2 items wait in queue 'medical', which needs role 'medical' that 'bob' lacks" \
        in detail and "lookfirst reviewers grant bob --role medical" in detail
    human = run(env, "review", "claim", "--reviewer", "bob", expect=2)
    assert "needs role 'medical'" in human.stderr

    # a role alone, without a queue; then queues and roles taken back independently
    assert js(run(env, "reviewers", "add", "bob", "--role", "medical", "--json"))[
        "can_claim"] == ["medical"]
    run(env, "reviewers", "grant", "bob", "--queue", "appeals")
    after = js(run(env, "reviewers", "revoke", "bob", "--role", "medical", "--json"))
    assert (after["queues"], after["roles"], after["can_claim"]) == (
        ["appeals", "medical"], [], ["appeals"])
    after = js(run(env, "reviewers", "revoke", "bob", "--queue", "appeals", "--json"))
    assert after["queues"] == ["medical"]
    run(env, "reviewers", "grant", "bob", "--role", "medical")
    assert js(run(env, "review", "claim", "--reviewer", "bob", "--json"))["queue"] == "medical"
    gone = js(run(env, "reviewers", "deactivate", "bob", "--json"))
    assert gone["active"] is False and gone["can_claim"] == []
    refusal(run(env, "review", "claim", "--reviewer", "bob", "--json", expect=2),
            "review.unknown_reviewer")
    listed = run(env, "reviewers", "list")
    assert "bob" in listed.stdout and "': " not in listed.stdout
    refusal(run(env, "reviewers", "grant", "zed", "--role", "medical", "--json", expect=2),
            "review.unknown_reviewer")
    refusal(run(env, "reviewers", "grant", "bob", "--queue", "nope", "--json", expect=2),
            "queue.unknown")
    refusal(run(env, "reviewers", "grant", "bob", "--json", expect=2),
            "reviewers.nothing_to_change")
    # every change is in the audit log, with the operator who made it
    events = js(run(env, "audit", "verify", "--json"))
    assert events["ok"] is True


def test_refusals_say_why_and_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "reviewers", "add", "alice", "--queue", "demo", "--queue", "appeals")
    run(env, "reviewers", "add", "eli", "--queue", "appeals")
    scored = js(run(env, "score", ASTRONAUT, "--account", "acct-1", "--context",
                    "audience=public", "--json"))
    item, decision = scored["review_item_id"], scored["decision_id"]

    # the same upload with another context: refused, with the stored context and what to do
    again = run(env, "score", ASTRONAUT, "--account", "acct-1", "--json", expect=2)
    detail = refusal(again, "upload.context_conflict")
    assert "audience=public" in detail and "this request says audience=private" in detail
    assert "--upload-id" in detail
    human = run(env, "score", ASTRONAUT, "--account", "acct-1", expect=2)
    assert "upload.context_conflict" in human.stderr and "--upload-id" in human.stderr
    same = js(run(env, "score", ASTRONAUT, "--account", "acct-1", "--context",
                  "audience=public", "--json"))
    assert same["already_scored"] is True and same["decision_id"] == decision
    new = js(run(env, "score", ASTRONAUT, "--account", "acct-1", "--upload-id", "up-2",
                 "--json"))
    assert new["already_scored"] is False and new["decision_id"] != decision

    # specific codes for the user's own mistakes
    refusal(run(env, "score", str(tmp_path / "missing.jpg"), "--json", expect=2),
            "input.not_found")
    run(env, "review", "claim", "--reviewer", "alice", "--item", str(item))
    refusal(run(env, "review", "decide", str(item), "--reviewer", "alice", "--verdict", "nope",
                "--json", expect=2), "verdict.unknown")
    refusal(run(env, "review", "decide", str(item), "--reviewer", "alice", "--verdict",
                "violating", "--json", expect=2), "verdict.categories_required")
    decided = run(env, "review", "decide", str(item), "--reviewer", "alice", "--verdict",
                  "violating", "--category", "person.face")
    assert "': " not in decided.stdout

    # the statement of reasons: the CLI's appeal command beside the API's
    sor = run(env, "decisions", "show", decision)
    assert f"lookfirst review appeal {decision}" in sor.stdout
    assert "POST /v1/appeals" in sor.stdout and "': " not in sor.stdout
    run(env, "review", "appeal", decision, "--statement", "It is an astronaut.")
    appeal_item = next(i["id"] for i in js(run(env, "review", "list", "--json"))
                       if i["kind"] == "appeal")

    # the fresh-eyes rule, said in words
    detail = refusal(run(env, "review", "claim", "--reviewer", "alice", "--item",
                         str(appeal_item), "--json", expect=2), "review.fresh_eyes")
    assert "you decided the original; another reviewer must take the appeal" in detail
    detail = refusal(run(env, "review", "claim", "--reviewer", "alice", "--queue", "appeals",
                         "--json", expect=2), "review.queue_empty")
    assert "fresh-eyes rule" in detail
    # not entitled to the queue at all
    detail = refusal(run(env, "review", "claim", "--reviewer", "eli", "--queue", "demo",
                         "--json", expect=2), "review.not_entitled")
    assert "lookfirst reviewers grant eli --queue demo" in detail
    assert js(run(env, "review", "claim", "--reviewer", "eli", "--json"))["id"] == appeal_item
