"""End to end through the real CLI in subprocesses: the README's own commands, the real model,
a real SQLite database.  The path: score → review item → an execution attempt before the
verdict is refused → a person decides → the action is executed and audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOOKFIRST = Path(sys.executable).parent / "lookfirst"
pytestmark = pytest.mark.model


def run(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(LOOKFIRST), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def js(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
    e.update(
        LOOKFIRST_DATA_DIR=str(tmp_path / "data"),
        LOOKFIRST_POLICY_PATH=str(ROOT / "pipeline/policies/demo.yaml"),
        LOOKFIRST_NOTICE_PERIOD_HOURS="0",
        LOOKFIRST_MODEL_THREADS="1",
        ORT_DISABLE_TELEMETRY="1",
    )
    return e


def test_score_review_decide_execute_audit(env: dict[str, str]) -> None:
    run(env, "reviewers", "add", "dana", "--queue", "demo", "--queue", "appeals")
    scored = js(run(env, "score", str(ROOT / "samples/astronaut.jpg"), "--account", "acct-9",
                    "--context", "audience=public", "--json"))
    assert scored["outcome"] == "review" and scored["queue"] == "demo"
    assert scored["model_version"].startswith("nudenet-320n@sha256:")
    assert scored["scores"]["person.face"] > 0.5
    fired = [r for r in scored["reasons"]["rules"] if r["fired"]]
    assert fired and fired[0]["category"] == "person.face"
    item, decision = scored["review_item_id"], scored["decision_id"]

    # scoring the same upload again returns the stored decision; nothing is scored twice
    again = js(run(env, "score", str(ROOT / "samples/astronaut.jpg"), "--account", "acct-9",
                   "--context", "audience=public", "--json"))
    assert again["decision_id"] == decision and again["already_scored"] is True

    # before any person has decided, the proposal cannot be executed
    proposed = js(run(env, "actions", "list", "--decision", decision, "--json"))
    assert [a["status"] for a in proposed] == ["proposed"]
    refused = run(env, "actions", "execute", str(proposed[0]["id"]), "--json", expect=2)
    assert js(refused)["error"]["code"] == "action.not_approved"
    assert js(run(env, "actions", "execute", "--json")) == []  # nothing is due either

    # deciding without holding the lease is refused; claim, then decide
    refused = run(env, "review", "decide", str(item), "--reviewer", "dana", "--verdict",
                  "violating", "--category", "person.face", "--json", expect=2)
    assert js(refused)["error"]["code"] == "review.not_claimant"
    claimed = js(run(env, "review", "claim", "--reviewer", "dana", "--json"))
    assert claimed["id"] == item
    decided = js(run(env, "review", "decide", str(item), "--reviewer", "dana", "--verdict",
                     "violating", "--category", "person.face", "--note", "test", "--json"))
    assert decided["status"] == "decided"
    assert [(a["kind"], a["status"], a["approvers"]) for a in decided["actions"]] == [
        ("remove_content", "approved", ["dana"])
    ]
    executed = js(run(env, "actions", "execute", "--json"))
    assert [(a["kind"], a["status"]) for a in executed] == [("remove_content", "executed")]

    sor = js(run(env, "decisions", "show", decision, "--json"))
    assert sor["reviews"][0]["verdicts"][0]["reviewer"] == "dana"
    assert sor["actions"][0]["status"] == "executed"
    assert "until" in sor["how_to_appeal"]
    audit = js(run(env, "audit", "verify", "--json"))
    assert audit["ok"] is True and audit["events"] > 5

    # a reviewer's tool may lease several items at once, each on its own lease
    more = [js(run(env, "score", str(ROOT / "samples/astronaut.jpg"), "--account", f"acct-b{i}",
                   "--json"))["review_item_id"] for i in range(2)]
    batch = js(run(env, "review", "claim", "--reviewer", "dana", "--count", "5", "--json"))
    assert [(i["id"], i["claimed_by"]) for i in batch["items"]] == [(m, "dana") for m in more]
    empty = run(env, "review", "claim", "--reviewer", "dana", "--count", "5", "--json", expect=2)
    assert js(empty)["error"]["code"] == "review.queue_empty"


def test_user_errors_have_codes_and_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello, I am text")
    out = run(env, "score", str(bad), "--json", expect=2)
    assert js(out)["error"]["code"] == "image.unsupported_type"
    out = run(env, "score", str(ROOT / "samples/coffee.jpg"), "--context", "nope=1", "--json",
              expect=2)
    assert js(out)["error"]["code"] == "context.invalid"
    out = run(env, "review", "claim", "--reviewer", "nobody", "--json", expect=2)
    assert js(out)["error"]["code"] == "review.unknown_reviewer"
    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("version: 1\ncategories: {}\nwhat: 3\n")
    out = run(env, "policy", "validate", str(bad_policy), "--json", expect=2)
    assert js(out)["error"]["code"] == "policy.invalid"


def test_database_unavailable_is_exit_3(env: dict[str, str]) -> None:
    env = {**env, "LOOKFIRST_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    out = run(env, "review", "stats", "--json", expect=3)
    assert js(out)["error"]["code"] == "dependency.database"


def test_make_run_demo_script(tmp_path: Path) -> None:
    """`make run`'s job, start to end, as a newcomer runs it."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
    e.update(LOOKFIRST_DATA_DIR=str(tmp_path / "demo"), VENV=str(Path(sys.executable).parents[1]),
             LOOKFIRST_MODEL_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], env=e, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "allow" in text and "review" in text
    assert "action.not_approved" in proc.stderr
    assert "audit chain verifies" in text


def test_hash_banks_route_before_scores(env: dict[str, str], tmp_path: Path) -> None:
    """A known-violating hash goes to the two-person severe queue whatever the scores say; an
    image a person cleared is not flagged again when it is shared again."""
    import hashlib

    env = {**env, "LOOKFIRST_POLICY_PATH": str(ROOT / "pipeline/policies/default.yaml")}
    coffee = ROOT / "samples/coffee.jpg"
    bank = tmp_path / "known.txt"
    bank.write_text("# test list\n" + hashlib.sha256(coffee.read_bytes()).hexdigest() + "\n")
    assert js(run(env, "banks", "import", str(bank), "--json"))["added"] == 1
    hit = js(run(env, "score", str(coffee), "--account", "a1", "--json"))
    assert hit["outcome"] in ("review", "hold") and hit["queue"] == "severe"
    assert hit["reasons"]["bank_match"] == "violating"

    # the demo policy flags the astronaut's face; a person clears it; shared again: allowed
    demo = {**env, "LOOKFIRST_POLICY_PATH": str(ROOT / "pipeline/policies/demo.yaml")}
    run(demo, "reviewers", "add", "dana", "--queue", "demo")
    first = js(run(demo, "score", str(ROOT / "samples/astronaut.jpg"), "--account", "a2",
                   "--json"))
    assert first["outcome"] == "review"
    run(demo, "review", "claim", "--reviewer", "dana")
    run(demo, "review", "decide", str(first["review_item_id"]), "--reviewer", "dana",
        "--verdict", "benign")
    listed = js(run(demo, "banks", "list", "--bank", "cleared_benign", "--json"))
    assert [e["value"] for e in listed if e["kind"] == "sha256"] == [first["sha256"]]
    # and its PDQ hash, which clears edited copies, for the account whose upload it was
    assert [(e["kind"], e["scope_account"], e["origin_item_id"]) for e in listed
            if e["kind"] == "pdq"] == [("pdq", "a2", first["review_item_id"])]
    again = js(run(demo, "score", str(ROOT / "samples/astronaut.jpg"), "--account", "a3",
                   "--json"))
    assert again["outcome"] == "allow" and again["reasons"]["bank_match"] == "cleared_benign"


def test_worker_delivers_the_outbox_to_the_platform(env: dict[str, str]) -> None:
    """`lookfirst worker --once` signs and delivers every pending message; a second pass has
    nothing left; the platform saw each message once."""
    from tests.integration.flaky_receiver import FlakyReceiver

    secret = "test-webhook-secret"
    run(env, "score", str(ROOT / "samples/astronaut.jpg"), str(ROOT / "samples/coffee.jpg"),
        "--json")
    pending = js(run(env, "outbox", "status", "--json"))["pending"]
    assert pending >= 2  # one decision message per upload at least
    with FlakyReceiver(secret=secret, max_skew_s=300) as platform:
        wenv = {**env, "LOOKFIRST_WEBHOOK_URL": platform.url, "LOOKFIRST_WEBHOOK_SECRET": secret}
        first = js(run(wenv, "worker", "--once", "--json"))
        assert first["delivered"] == pending and first["dead"] == 0
        assert js(run(wenv, "worker", "--once", "--json"))["leased"] == 0
        platform.wait_idle()
        assert len(platform.effects) == pending
    assert js(run(env, "outbox", "status", "--json")) == {"pending": 0, "delivered": pending,
                                                          "dead": 0}
    # without a webhook configured the worker refuses with a clear code, not a traceback
    out = run(env, "worker", "--once", "--json", expect=2)
    assert js(out)["error"]["code"] == "config.invalid"
