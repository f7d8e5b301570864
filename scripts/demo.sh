#!/usr/bin/env bash
# `make run`: the main job on the bundled sample photos, end to end, with the real model.
# Scores are real (NudeNet on benign photos); the reviewers' verdicts below are scripted so the
# demo can show every step, and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LF="$VENV/bin/lookfirst"
PY="$VENV/bin/python"
export ORT_DISABLE_TELEMETRY=1
export LOOKFIRST_DATA_DIR=${LOOKFIRST_DATA_DIR:-var/demo}
# a clearly labelled demo policy: it routes faces to a 'demo' queue so benign photos show both
# paths (allow and review).  Never use it in production; the default policy is policies/default.yaml
export LOOKFIRST_POLICY_PATH=${LOOKFIRST_POLICY_PATH:-pipeline/policies/demo.yaml}
export LOOKFIRST_NOTICE_PERIOD_HOURS=${LOOKFIRST_NOTICE_PERIOD_HOURS:-0}
rm -rf "$LOOKFIRST_DATA_DIR"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
field() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

step "1. database (SQLite under $LOOKFIRST_DATA_DIR) and reviewers"
"$LF" db upgrade >/dev/null
"$LF" policy validate "$LOOKFIRST_POLICY_PATH"
"$LF" reviewers add dana --queue demo --queue qa --queue appeals >/dev/null
"$LF" reviewers add eli --queue demo --queue appeals --queue medical --role medical >/dev/null
"$LF" reviewers list

step "2. the batch job: score samples/manifest.jsonl with each upload's context"
# fp32: NudeNet's own numbers (on a real backfill, the default `--model auto` first measures
# the faster variants' agreement on this machine and runs one only if it meets the bar)
"$LF" batch samples/manifest.jsonl --out "$LOOKFIRST_DATA_DIR/results.parquet" --model fp32
"$PY" - "$LOOKFIRST_DATA_DIR/results.parquet" <<'PYEOF'
import sys
import pyarrow.parquet as pq
for r in sorted(pq.read_table(sys.argv[1]).to_pylist(), key=lambda r: r["ordinal"]):
    where = f" -> queue {r['queue']}, item {r['review_item_id']}" if r["queue"] else ""
    print(f"  {r['outcome'] or r['error_code']:<7} {r['input']}{where}")
PYEOF

step "3. the review queue (nothing has been done to any account)"
"$LF" review list
"$LF" review stats

step "4. reviewer dana claims the most urgent item"
ITEM_JSON=$("$LF" review claim --reviewer dana --json)
ITEM=$(echo "$ITEM_JSON" | field '["id"]')
DECISION=$(echo "$ITEM_JSON" | field '["decision_id"]')
SHOW=$("$LF" review show "$ITEM" --reviewer dana --json)
"$PY" - "$SHOW" <<'PYEOF'
import json, sys
d = json.loads(sys.argv[1])
scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d["scores"].items(), key=lambda kv: -kv[1]))
print(f"item {d['id']} queue={d['queue']} outcome={d['outcome']} scores: {scores}")
print("context:", ", ".join(f"{k}={v}" for k, v in d["context"].items()))
for r in d["reasons"]["rules"]:
    if r["fired"]:
        print(f"  fired {r['rule']}: score {r['score']} >= threshold {r['threshold']}")
print("proposed actions (proposals only):", ", ".join(d["proposed_actions"]) or "none")
PYEOF

step "5. an attempt to execute the proposal before a person has decided is refused"
PROPOSED=$("$LF" actions list --decision "$DECISION" --status proposed --json | field '[0]["id"]')
if "$LF" actions execute "$PROPOSED"; then echo "BUG: executed without a verdict"; exit 1; fi

step "6. dana decides (scripted demo verdict: violating, to show the enforcement path)"
"$LF" review decide "$ITEM" --reviewer dana --verdict violating --category person.face \
  --note "scripted demo verdict"
"$LF" actions execute
"$LF" actions list --decision "$DECISION"

step "7. the user appeals with their own context; eli (who did not decide it) upholds it"
"$LF" review appeal "$DECISION" --statement "It is a portrait of an astronaut; nothing wrong."
APPEAL_ITEM=$("$LF" review claim --reviewer eli --queue appeals --json | field '["id"]')
"$LF" review decide "$APPEAL_ITEM" --reviewer eli --verdict benign --note "appeal upheld"
"$LF" actions execute
"$LF" actions list --decision "$DECISION"

step "8. the statement of reasons for that decision (what a user notice or an auditor reads)"
"$LF" decisions show "$DECISION"

step "9. the outbox (messages for the platform) and the audit chain"
"$LF" outbox status
"$LF" audit verify
# every command below works as printed, pasted into a shell in this folder (a test runs them)
cat <<MSG

Done.  The demo's records are in $LOOKFIRST_DATA_DIR; to look at them yourself:
  export LOOKFIRST_DATA_DIR=$LOOKFIRST_DATA_DIR LOOKFIRST_POLICY_PATH=$LOOKFIRST_POLICY_PATH
  $LF review list --all
  $LF decisions show $DECISION
  $LF reviewers list
  $LF --help
MSG
