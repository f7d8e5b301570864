"""The motivating case through the real API (uvicorn, SQLite, the real NudeNet model, the demo
policy): a photo shared for a doctor is flagged to the medical queue; a medical reviewer
decides `benign_medical`; the same photo re-sent by the same account after a messaging app
halved it and recompressed it at quality 30 (new bytes, a new sha256) is not flagged again, and
its statement of reasons carries the clearance.  NASA's astronaut portrait stands in for the
family photo (the demo policy flags faces)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.api_conftest_helpers import DEMO_POLICY, ROOT, ApiServer
from tests.photos import half_size, mirror, reshared, sample, sample_bytes

ENV = {"LOOKFIRST_POLICY_PATH": str(DEMO_POLICY), "LOOKFIRST_NOTICE_PERIOD_HOURS": "0"}
pytestmark = pytest.mark.api_server(scorer="nudenet", env=ENV, client_scopes=("classify",))


@pytest.fixture(scope="module")
def reviewers(api: ApiServer) -> Iterator[httpx.Client]:
    api.add_reviewer("eli", ["medical", "demo", "severe"], roles=["medical"])
    with api.client(api.key("review", "delegate")) as c:  # a console acting for eli
        yield c


def classify(c: httpx.Client, data: bytes, account: str, **context: Any) -> dict[str, Any]:
    fields = {"account_id": account, "upload_id": f"up-{uuid.uuid4().hex[:12]}",
              **{k: str(v).lower() if isinstance(v, bool) else str(v)
                 for k, v in context.items()}}
    r = c.post("/v1/classify", files={"file": ("photo.jpg", data, "image/jpeg")}, data=fields)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def cli(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env={**api.env},
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.model
def test_a_cleared_medical_photo_is_not_flagged_again_when_resent_recompressed(
    api: ApiServer, client: httpx.Client, reviewers: httpx.Client
) -> None:
    family = f"family-{uuid.uuid4().hex[:8]}"
    first = classify(client, sample_bytes("astronaut"), family, medical_sharing=True)
    assert first["outcome"] == "review" and first["queue"] == "medical", first
    assert first["reasons"]["bank_match"] is None
    item = first["review_item_id"]

    eli = {"X-Reviewer": "eli"}
    claimed = reviewers.post("/v1/review/claim", headers=eli, json={"item_id": item})
    assert claimed.status_code == 200, claimed.text
    v = reviewers.post(f"/v1/review/items/{item}/verdict", headers=eli,
                       json={"verdict": "benign_medical", "note": "a rash, for the doctor"})
    assert v.status_code == 200 and v.json()["status"] == "decided", v.text

    # the messaging app's copy: half the size, JPEG quality 30: other bytes, the same picture
    copy = reshared(sample("astronaut"), half_size, quality=30)
    assert copy != sample_bytes("astronaut")
    again = classify(client, copy, family, medical_sharing=True)
    assert again["reasons"]["content_sha256"] != first["reasons"]["content_sha256"]
    assert again["outcome"] == "allow" and again["review_item_id"] is None, again
    bank = again["reasons"]["bank"]
    assert bank["bank"] == "cleared_benign" and bank["kind"] == "pdq"
    assert bank["origin_item_id"] == item and bank["added_by"] == "eli"
    assert 0 < bank["distance"] <= 31
    # the model still sees the face: it is the clearance, not the score, that allows it
    assert again["scores"]["person.face"] >= 0.65
    assert again["reasons"]["suppressed_by_cleared_match"] == ["person.face"]

    st = client.get(f"/v1/decisions/{again['decision_id']}").json()
    day = bank["added_at"][:10]
    assert st["context_effects"][0] == f"cleared by a reviewer on {day} (item {item})"
    assert st["bank_match"]["entry_id"] == bank["entry_id"]

    # a mirrored copy is the same picture too (the eight dihedral hashes)
    flipped = classify(client, reshared(sample("astronaut"), mirror), family)
    assert flipped["outcome"] == "allow" and flipped["reasons"]["bank"]["kind"] == "pdq"

    # the clearance is this family's: another account's recompressed copy is looked at afresh
    stranger = classify(client, copy, f"other-{uuid.uuid4().hex[:8]}", medical_sharing=True)
    assert stranger["outcome"] == "review" and stranger["queue"] == "medical"
    assert stranger["reasons"]["bank_match"] is None

    # a different photo from the same family is not covered by the clearance
    other = classify(client, sample_bytes("chelsea"), family, medical_sharing=True)
    assert other["reasons"]["bank_match"] is None

    listed = cli(api, "banks", "list", "--bank", "cleared_benign", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [e for e in json.loads(listed.stdout) if e["origin_item_id"] == item]
    assert {(e["kind"], e["scope_account"]) for e in mine} == {("sha256", None),
                                                               ("pdq", family)}
    verified = cli(api, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.model
def test_a_violating_pdq_match_goes_to_review_and_a_reviewer_can_mark_it_false(
    api: ApiServer, client: httpx.Client, reviewers: httpx.Client, tmp_path: Any
) -> None:
    from pipeline.hashing.pdq import pdq_hash

    listed = tmp_path / "list.pdq"
    listed.write_text(pdq_hash(sample("rocket")).hex + "\n")
    imported = cli(api, "banks", "import", str(listed), "--format", "pdq", "--json")
    assert imported.returncode == 0 and json.loads(imported.stdout)["added"] == 1

    account = f"acct-{uuid.uuid4().hex[:8]}"
    hit = classify(client, reshared(sample("rocket"), half_size, quality=30), account)
    assert hit["outcome"] in ("review", "hold") and hit["queue"] == "severe", hit
    bank = hit["reasons"]["bank"]
    assert bank["bank"] == "violating" and bank["kind"] == "pdq" and bank["distance"] <= 31
    # never an automatic account action: at most the reversible content hold
    st = client.get(f"/v1/decisions/{hit['decision_id']}").json()
    assert {a["status"] for a in st["actions"] if a["kind"] != "hold_content"} <= {"proposed"}
    assert st["bank_match"]["entry_id"] == bank["entry_id"]

    url = f"/v1/review/bank-matches/{hit['decision_id']}"
    refused = reviewers.post(url, json={"verdict": "false"})  # who is acting?
    assert refused.status_code == 422 and refused.json()["code"] == "auth.reviewer_required"
    missing = reviewers.post("/v1/review/bank-matches/no-such", headers={"X-Reviewer": "eli"},
                             json={"verdict": "false"})
    assert missing.status_code == 404 and missing.json()["code"] == "bank.not_found"
    judged = reviewers.post(url, headers={"X-Reviewer": "eli"},
                            json={"verdict": "false", "note": "a rocket launch"})
    assert judged.status_code == 200, judged.text
    assert [e["state"] for e in judged.json()["entries"]] == ["demoted"]
    after = classify(client, reshared(sample("rocket"), half_size, quality=40), account)
    assert after["reasons"]["bank_match"] is None
