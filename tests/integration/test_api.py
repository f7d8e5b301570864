"""The REST API against a real uvicorn on 127.0.0.1, a real SQLite database and the real
NudeNet model: the happy path, exactly-once, idempotency, review and appeals, readiness,
load shedding, limits and errors, metrics, the keys CLI.  The demo policy routes a face to the
"demo" queue, so a benign sample photo (NASA's astronaut portrait) reaches review."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from models.base import ScoreResult
from pipeline.api.errors import from_exception
from pipeline.batching import MicroBatcher, Overloaded
from tests.hostile import quadrants
from tests.integration.api_conftest_helpers import (
    DEMO_POLICY,
    ROOT,
    SAMPLES,
    ApiServer,
    raw_request,
    start_server,
)

ASTRONAUT = (SAMPLES / "astronaut.jpg").read_bytes()


def fresh_astronaut() -> bytes:
    """The same pixels under new bytes (a JPEG comment segment): new content, so a test does
    not meet the cleared-benign bank that an earlier test's benign verdict (rightly) filled."""
    tag = uuid.uuid4().hex.encode()
    return ASTRONAUT[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + ASTRONAUT[2:]
COFFEE = (SAMPLES / "coffee.jpg").read_bytes()
CHELSEA = (SAMPLES / "chelsea.jpg").read_bytes()
ENV = {
    "LOOKFIRST_POLICY_PATH": str(DEMO_POLICY),
    "LOOKFIRST_NOTICE_PERIOD_HOURS": "0",
    "LOOKFIRST_LOG_LEVEL": "INFO",
}
pytestmark = pytest.mark.api_server(scorer="nudenet", env=ENV,
                                    client_scopes=("classify", "appeal"))


@pytest.fixture(scope="module")
def reviewers(api: ApiServer) -> Iterator[httpx.Client]:
    api.add_reviewer("dana", ["demo", "qa", "appeals"])
    api.add_reviewer("eli", ["demo", "appeals", "medical"], roles=["medical"])
    # a console acting for the reviewers it names (issue 16: a delegate key)
    with api.client(api.key("review", "delegate")) as c:
        yield c


def upload_id() -> str:
    return f"up-{uuid.uuid4().hex[:12]}"


def classify(c: httpx.Client, data: bytes, *, account: str = "acct-1", upload: str | None = None,
             headers: dict[str, str] | None = None, **context: Any) -> httpx.Response:
    fields = {"account_id": account, "upload_id": upload or upload_id(),
              **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in context.items()}}
    return c.post("/v1/classify", files={"file": ("photo.jpg", data, "image/jpeg")}, data=fields,
                  headers=headers or {})


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"code", "detail"}, body
    assert body["code"] == code, body
    assert body["detail"] and "Traceback" not in body["detail"]
    return dict(body)


def metric(api: ApiServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{api.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if m is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


# ---- the happy path, with the real model --------------------------------------------------------
@pytest.mark.model
def test_classify_happy_path_multipart_and_statement_of_reasons(
    api: ApiServer, client: httpx.Client
) -> None:
    up = upload_id()
    r = classify(client, ASTRONAUT, upload=up, audience="public", account_age_days=400)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["outcome"] == "review" and d["queue"] == "demo"
    assert isinstance(d["review_item_id"], int)
    assert d["model_version"].startswith("nudenet-320n@sha256:")
    assert d["policy_version"] == "2026.11.0-demo"
    assert set(d["scores"]) == {"nudity.explicit", "nudity.partial", "skin.exposed",
                                "person.face"}
    assert d["scores"]["person.face"] >= 0.5  # NudeNet sees the astronaut's face (0.73)
    assert d["already_scored"] is False and d["upload_id"] == up
    fired = [rule for rule in d["reasons"]["rules"] if rule["fired"]]
    assert [rule["category"] for rule in fired] == ["person.face"]
    assert d["reasons"]["context"]["audience"] == "public"
    assert r.headers["x-request-id"]

    s = client.get(d["statement_url"])
    assert s.status_code == 200, s.text
    st = s.json()
    assert st["decision_id"] == d["decision_id"] and st["outcome"] == "review"
    assert st["detected"] == d["scores"] and st["model_version"] == d["model_version"]
    assert st["upload"]["id"] == up and st["context"]["account_age_days"] == 400
    assert st["rules"] == d["reasons"]["rules"]
    assert st["actions"] == [a for a in st["actions"] if a["status"] == "proposed"]  # nothing done
    assert "POST /v1/appeals" in st["how_to_appeal"]["how"]


@pytest.mark.model
def test_classify_raw_body_with_query_context(client: httpx.Client) -> None:
    r = client.post("/v1/classify", content=COFFEE, headers={"content-type": "image/jpeg"},
                    params={"account_id": "acct-raw", "upload_id": upload_id(),
                            "medical_sharing": "false", "audience": "followers"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["outcome"] == "allow" and d["queue"] is None and d["review_item_id"] is None
    assert d["reasons"]["context"]["audience"] == "followers"


@pytest.mark.model
def test_exactly_once_per_account_and_upload_id(api: ApiServer, client: httpx.Client) -> None:
    up = upload_id()
    first = classify(client, ASTRONAUT, upload=up).json()
    # the same upload id again, even with other bytes, returns the stored decision
    again = classify(client, CHELSEA, upload=up)
    assert again.status_code == 200
    second = again.json()
    assert second["decision_id"] == first["decision_id"] and second["already_scored"] is True
    assert second["scores"] == first["scores"] and second["outcome"] == first["outcome"]
    # another account may use the same upload id: a different upload
    other = classify(client, ASTRONAUT, account="acct-2", upload=up).json()
    assert other["decision_id"] != first["decision_id"]

    # concurrent requests for one new upload: one decision, one review item
    up2 = upload_id()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: classify(client, ASTRONAUT, upload=up2), range(8)))
    assert {r.status_code for r in results} == {200}
    assert len({r.json()["decision_id"] for r in results}) == 1
    assert len({r.json()["review_item_id"] for r in results}) == 1
    from sqlalchemy import create_engine, text

    engine = create_engine(api.db_url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM upload WHERE external_id = :u"),
                         {"u": up2}).scalar_one()
    engine.dispose()
    assert n == 1


@pytest.mark.model
def test_idempotency_key_replays_and_refuses_a_different_request(
    api: ApiServer, client: httpx.Client
) -> None:
    key, up = f"idem-{uuid.uuid4().hex}", upload_id()
    h = {"Idempotency-Key": key}
    first = classify(client, COFFEE, upload=up, headers=h, audience="public")
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    replay = classify(client, COFFEE, upload=up, headers=h, audience="public")
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()  # byte for byte the stored response
    # the same request as raw body is the same request
    raw = client.post("/v1/classify", content=COFFEE, headers={**h, "content-type": "image/jpeg"},
                      params={"account_id": "acct-1", "upload_id": up, "audience": "public"})
    assert raw.status_code == 200 and raw.json() == first.json()
    # the same key with a different request: refused, nothing stored
    for changed in (dict(audience="private"), dict(upload=upload_id(), audience="public")):
        r = classify(client, COFFEE, headers=h, **{"upload": up, **changed})
        error(r, 409, "idempotency.mismatch")
    r = classify(client, CHELSEA, upload=up, headers=h, audience="public")
    error(r, 409, "idempotency.mismatch")
    # keys are per API key: another key may use the same Idempotency-Key
    with api.client(api.key("classify", name="other-platform")) as other:
        r = classify(other, CHELSEA, upload=upload_id(), headers=h)
        assert r.status_code == 200
    # a bad key value is a validation error
    error(classify(client, COFFEE, headers={"Idempotency-Key": "x" * 256}), 422,
          "request.invalid")


# ---- review and appeals over HTTP ---------------------------------------------------------------
@pytest.mark.model
def test_review_verdict_and_appeal_go_to_another_reviewer(
    api: ApiServer, client: httpx.Client, reviewers: httpx.Client
) -> None:
    d = classify(client, fresh_astronaut(), account="acct-appeal").json()
    item = d["review_item_id"]
    dana = {"X-Reviewer": "dana"}

    listing = reviewers.get("/v1/review/items", headers=dana, params={"queue": "demo"})
    assert listing.status_code == 200
    assert item in [i["id"] for i in listing.json()]
    claimed = reviewers.post("/v1/review/claim", headers=dana, json={"item_id": item})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["claimed_by"] == "dana" and claimed.json()["status"] == "claimed"
    # eli cannot decide what dana holds
    error(reviewers.post(f"/v1/review/items/{item}/verdict", headers={"X-Reviewer": "eli"},
                         json={"verdict": "benign"}), 409, "review.not_claimant")
    v = reviewers.post(f"/v1/review/items/{item}/verdict", headers=dana,
                       json={"verdict": "violating", "categories": ["person.face"],
                             "note": "scripted test verdict"})
    assert v.status_code == 200, v.text
    assert v.json()["status"] == "decided"
    kinds = {a["kind"]: a["status"] for a in v.json()["actions"]}
    assert kinds and all(s in ("approved", "notified") for s in kinds.values())

    # the user appeals with their own context
    ap = client.post("/v1/appeals", json={
        "decision_id": d["decision_id"], "account_id": "acct-appeal",
        "statement": "It is a portrait of an astronaut.", "context": {"audience": "private"}})
    assert ap.status_code == 201, ap.text
    appeal = ap.json()
    assert appeal["status"] == "open" and appeal["decision_id"] == d["decision_id"]
    # a second appeal while one is open is refused
    error(client.post("/v1/appeals", json={"decision_id": d["decision_id"],
                                           "statement": "again"}), 409, "appeal.not_allowed")
    # dana decided it before: the appeal is not hers to claim
    error(reviewers.post("/v1/review/claim", headers=dana, json={"queue": "appeals"}), 404,
          "review.queue_empty")
    eli = {"X-Reviewer": "eli"}
    c2 = reviewers.post("/v1/review/claim", json={"queue": "appeals", "reviewer": "eli"})
    assert c2.status_code == 200 and c2.json()["id"] == appeal["item_id"]
    assert c2.json()["appeal_statement"] == "It is a portrait of an astronaut."
    v2 = reviewers.post(f"/v1/review/items/{appeal['item_id']}/verdict", headers=eli,
                        json={"verdict": "benign", "note": "appeal upheld"})
    assert v2.status_code == 200 and v2.json()["status"] == "decided"

    st = client.get(f"/v1/decisions/{d['decision_id']}").json()
    assert [a["status"] for a in st["appeals"]] == ["upheld"]
    assert {r["kind"] for r in st["reviews"]} == {"initial", "appeal"}
    assert all(a["status"] in ("cancelled", "reversed", "executed") for a in st["actions"]
               if a["kind"] != "restore_content")
    # someone else's account id does not find the decision
    error(client.post("/v1/appeals", json={"decision_id": d["decision_id"],
                                           "account_id": "acct-other", "statement": "x"}),
          404, "review.not_found")


@pytest.mark.model
def test_appeal_refusals_and_context_reply(client: httpx.Client) -> None:
    allowed = classify(client, COFFEE).json()
    error(client.post("/v1/appeals", json={"decision_id": allowed["decision_id"],
                                           "statement": "why?"}), 409, "appeal.not_allowed")
    error(client.post("/v1/appeals", json={"decision_id": "no-such", "statement": "x"}), 404,
          "review.not_found")
    error(client.post("/v1/appeals", json={"decision_id": allowed["decision_id"],
                                           "statement": "x", "context": {"bogus": 1}}),
          400, "context.invalid")
    error(client.post("/v1/appeals", json={"decision_id": allowed["decision_id"],
                                           "statement": "", "extra": 1}), 422, "request.invalid")
    error(client.post(f"/v1/decisions/{allowed['decision_id']}/context",
                      json={"statement": "it was for my doctor"}), 409, "appeal.not_allowed")
    error(client.get("/v1/decisions/nope"), 404, "review.not_found")


@pytest.mark.model
def test_review_endpoints_follow_the_service_rules(
    client: httpx.Client, reviewers: httpx.Client
) -> None:
    d = classify(client, fresh_astronaut(), account="acct-review").json()
    item = d["review_item_id"]
    # who is looking?  A delegate must name the reviewer it acts for
    error(reviewers.get("/v1/review/items"), 422, "auth.reviewer_required")
    error(reviewers.get("/v1/review/items", headers={"X-Reviewer": "nobody"}), 403,
          "review.unknown_reviewer")
    error(reviewers.post("/v1/review/claim", headers={"X-Reviewer": "dana"},
                         json={"reviewer": "eli"}), 422, "request.invalid")
    error(reviewers.post("/v1/review/claim", headers={"X-Reviewer": "dana"},
                         json={"queue": "medical"}), 403, "review.not_entitled")
    shown = reviewers.get(f"/v1/review/items/{item}", headers={"X-Reviewer": "dana"})
    assert shown.status_code == 200 and shown.json()["decision_id"] == d["decision_id"]
    ok = reviewers.post("/v1/review/claim", headers={"X-Reviewer": "eli"}, json={"item_id": item})
    assert ok.status_code == 200
    error(reviewers.post(f"/v1/review/items/{item}/release", headers={"X-Reviewer": "dana"}),
          409, "review.not_claimant")
    rel = reviewers.post(f"/v1/review/items/{item}/release", headers={"X-Reviewer": "eli"})
    assert rel.status_code == 200 and rel.json() == {"item_id": item, "released": True}
    error(reviewers.post(f"/v1/review/items/{item}/verdict", headers={"X-Reviewer": "eli"},
                         json={"verdict": "maybe"}), 422, "request.invalid")
    stats = reviewers.get("/v1/review/stats")
    assert stats.status_code == 200
    demo = next(q for q in stats.json() if q["queue"] == "demo")
    assert demo["depth"] >= 1


# ---- auth, limits, errors -----------------------------------------------------------------------
@pytest.mark.model
def test_auth_errors_and_rate_limit(api: ApiServer) -> None:
    url = f"{api.url}/v1/decisions/anything"
    error(httpx.get(url), 401, "auth.missing")
    error(httpx.get(url, headers={"Authorization": "Bearer lf_aaaaaaaa_" + "b" * 43}), 401,
          "auth.invalid")
    error(httpx.get(url, headers={"Authorization": "Basic dXNlcjpwdw=="}), 401, "auth.invalid")
    error(httpx.get(url, headers={"X-API-Key": "not-a-key"}), 401, "auth.invalid")
    error(httpx.get(url, headers={"X-API-Key": api.key("admin")}), 404, "review.not_found")
    error(httpx.post(f"{api.url}/v1/appeals", json={},
                     headers={"X-API-Key": api.key("review")}), 403, "auth.forbidden")
    slow = api.key("classify", rate_per_minute=6, name="slow")  # bucket: one request
    first = httpx.get(url, headers={"X-API-Key": slow})
    assert first.status_code == 404
    r = httpx.get(url, headers={"X-API-Key": slow})
    error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 10
    assert metric(api, "lookfirst_requests_shed_total", reason="rate_limited") >= 1


@pytest.mark.model
def test_request_errors_have_stable_codes(api: ApiServer, client: httpx.Client) -> None:
    error(client.get("/v1/nowhere"), 404, "not_found")
    error(client.delete("/v1/classify"), 405, "method_not_allowed")
    error(client.post("/v1/classify", content=b"{}", headers={"content-type": "application/json"}),
          415, "request.unsupported_media_type")
    error(client.post("/v1/classify", files={"file": ("a", COFFEE)}, data={"account_id": "a"}),
          422, "request.invalid")  # no upload_id
    error(classify(client, COFFEE, medical_sharing="perhaps"), 400, "context.invalid")
    error(classify(client, COFFEE, favourite_colour="red"), 400, "context.invalid")
    error(classify(client, COFFEE, upload="has space"), 422, "request.invalid")
    error(client.post("/v1/classify", files=[("file", ("a", COFFEE)), ("file", ("b", COFFEE))],
                      data={"account_id": "a", "upload_id": upload_id()}), 400,
          "request.malformed")  # one file per request
    error(client.post("/v1/classify", content=b"--x\r\nbroken",
                      headers={"content-type": "multipart/form-data; boundary=x"}), 422,
          "request.invalid")  # parsed as far as it goes: no file in it
    error(client.post("/v1/classify", content=b"--x\r\nbroken",
                      headers={"content-type": "multipart/form-data"}), 400, "request.malformed")
    error(client.post("/v1/appeals", content=b"{not json",
                      headers={"content-type": "application/json"}), 422, "request.invalid")
    error(client.post("/v1/appeals", content=b"x" * (70 * 1024),
                      headers={"content-type": "application/json"}), 413, "request.too_large")


@pytest.mark.model
def test_body_limit_is_enforced_while_streaming(api: ApiServer, client: httpx.Client) -> None:
    key = api.key("classify", "appeal")
    target = f"/v1/classify?account_id=a&upload_id={upload_id()}"
    # a declared 2 GB body: refused before a byte of it is read
    head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: image/jpeg\r\nContent-Length: 2147483648\r\n\r\n")
    status, body, sent = raw_request(api, head, iter([b"\xff" * 65536] * 64))
    assert (status, body["code"]) == (413, "image.too_large")
    assert sent < 4 * 1024 * 1024
    # a chunked body with no declared size: cut off once it passes the 20 MB limit
    head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
    mb = b"\xff" * (1 << 20)
    chunk = f"{len(mb):x}\r\n".encode() + mb + b"\r\n"
    status, body, sent = raw_request(api, head, iter([chunk] * 200))
    assert (status, body["code"]) == (413, "image.too_large")
    assert sent < 60 * (1 << 20)  # stopped long before the 200 MB the client had to send
    assert api.peak_rss_kb() < 1024 * 1024
    assert client.get("/v1/decisions/x").status_code == 404  # and the server still serves


# ---- metrics, logs ------------------------------------------------------------------------------
@pytest.mark.model
def test_metrics_cover_latency_batches_queues_and_segments(
    api: ApiServer, client: httpx.Client
) -> None:
    classify(client, ASTRONAUT, medical_sharing=True, recipient_verified_provider=True)
    shared = classify(client, fresh_astronaut(), audience="public").json()  # not medical
    client.get(f"/v1/decisions/{shared['decision_id']}")
    text = httpx.get(f"{api.url}/metrics").text
    assert 'lookfirst_http_request_duration_seconds_bucket{le="0.1",method="POST",' \
           'route="/v1/classify",status="200"}' in text
    assert metric(api, "lookfirst_model_batch_size_count") >= 1
    # each new upload was recorded in some transaction: the two above, each alone
    assert metric(api, "lookfirst_record_batch_size_sum") >= 2
    assert metric(api, "lookfirst_decisions_total", medical_sharing="true") >= 1
    assert metric(api, "lookfirst_decisions_total", medical_sharing="false") >= 1
    assert metric(api, "lookfirst_category_fired_total", category="person.face") >= 1
    assert metric(api, "lookfirst_review_queue_depth", queue="demo") >= 1
    assert metric(api, "lookfirst_review_stats_up") == 1
    # every decision is announced to the platform through the outbox: a backlog until delivered
    assert metric(api, "lookfirst_outbox_messages", status="pending") >= 1
    assert metric(api, "lookfirst_outbox_messages", status="dead") == 0
    assert metric(api, "lookfirst_model_loaded") == 1
    assert "/v1/decisions/{decision_id}" in text  # route templates, never raw paths


@pytest.mark.model
def test_openapi_and_docs_need_no_key(api: ApiServer) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/classify", "/v1/decisions/{decision_id}", "/v1/appeals", "/v1/review/claim",
            "/health/ready", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/octet-stream"} <= set(body)
    assert httpx.get(f"{api.url}/docs").status_code == 200


@pytest.mark.model
def test_keys_cli_prints_the_key_once_and_the_server_accepts_it(api: ApiServer) -> None:
    env = {**api.env}
    run = [sys.executable, "-m", "pipeline.cli"]
    made = subprocess.run([*run, "keys", "create", "--scope", "review", "--name", "ui", "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    created = json.loads(made.stdout)
    assert created["key"].startswith(f"lf_{created['prefix']}_")
    r = httpx.get(f"{api.url}/v1/review/stats", headers={"X-API-Key": created["key"]})
    assert r.status_code == 200
    listed = subprocess.run([*run, "keys", "list", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert created["prefix"] in listed and created["key"] not in listed
    db = (api.data_dir / "lookfirst.db").read_bytes()
    assert created["key"].encode() not in db  # only its sha256 is stored
    subprocess.run([*run, "keys", "revoke", str(created["id"])], env=env, cwd=ROOT,
                   capture_output=True, check=True)
    deadline = time.monotonic() + 10  # the server's key cache lasts 5 s
    while time.monotonic() < deadline:
        r = httpx.get(f"{api.url}/v1/review/stats", headers={"X-API-Key": created["key"]})
        if r.status_code == 401:
            break
        time.sleep(0.25)
    error(r, 401, "auth.invalid")


@pytest.mark.model
def test_logs_hold_no_keys_ids_or_bodies(api: ApiServer, client: httpx.Client) -> None:
    secret_account = f"acct-{uuid.uuid4().hex}"
    secret_upload = upload_id()
    classify(client, ASTRONAUT, account=secret_account, upload=secret_upload)
    client.post("/v1/classify", content=b"not an image " + secret_account.encode(),
                headers={"content-type": "image/png"},
                params={"account_id": secret_account, "upload_id": upload_id()})
    log = api.log()
    assert "POST /v1/classify 200" in log  # the request log is on
    for secret in (secret_account, secret_upload, api.key("classify", "appeal")):
        assert secret not in log
    assert "Traceback" not in log


# ---- readiness and load shedding ----------------------------------------------------------------
@pytest.mark.model
def test_ready_is_503_until_the_model_loads_and_a_full_queue_sheds_load(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    env = {**ENV, "LOOKFIRST_API_QUEUE_LIMIT": "1"}
    api = start_server(tmp_path / "data", scorer="nudenet", env=env, gate=gate, wait_ready=False)
    try:
        error(httpx.get(f"{api.url}/health/ready"), 503, "dependency.unavailable")
        assert httpx.get(f"{api.url}/health/live").json() == {"status": "ok"}
        key = api.key("classify")
        # the first upload waits for the model; it holds the only place in the queue
        waiting: dict[str, httpx.Response] = {}

        def first_upload() -> None:
            with api.client(key) as c:
                waiting["r"] = classify(c, ASTRONAUT)

        first = threading.Thread(target=first_upload)
        first.start()
        deadline = time.monotonic() + 30
        while metric(api, "lookfirst_classify_inflight") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with api.client(key) as c:
            shed = classify(c, COFFEE)
        error(shed, 503, "overloaded")
        assert int(shed.headers["retry-after"]) >= 1
        gate.touch()  # the model finishes loading
        first.join(timeout=60)
        assert waiting["r"].status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(f"{api.url}/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ready = httpx.get(f"{api.url}/health/ready").json()
        assert ready["status"] == "ready" and ready["model_version"].startswith("nudenet-320n")
        assert metric(api, "lookfirst_requests_shed_total", reason="overloaded") == 1
    finally:
        api.stop()


# ---- the micro-batcher itself (no server) -------------------------------------------------------
def _count_batches(
    n: int, *, max_batch: int, max_queue: int = 100, arriving: int = 0
) -> tuple[list[int], list[float]]:
    sizes: list[int] = []

    def score(images: Any) -> list[ScoreResult]:
        sizes.append(len(images))
        return [ScoreResult("t@1", {"x": float(img[0, 0, 0]) / 255}) for img in images]

    async def main() -> list[float]:
        b = MicroBatcher(score, max_batch=max_batch, max_wait_s=0.05, max_queue=max_queue,
                         arriving=lambda: arriving)
        b.start()
        try:
            futs = [b.submit(np.full((2, 2, 3), i, dtype=np.uint8)) for i in range(n)]
            return [float(r.scores["x"]) for r in await asyncio.gather(*futs)]
        finally:
            await b.stop()

    return sizes, asyncio.run(main())


def test_micro_batcher_coalesces_and_keeps_order() -> None:
    sizes, scores = _count_batches(10, max_batch=4)
    assert sizes == [4, 4, 2]
    assert scores == [i / 255 for i in range(10)]  # each caller gets its own image's scores
    sizes, _ = _count_batches(5, max_batch=1)
    assert sizes == [1] * 5


def test_micro_batcher_sheds_past_its_bound() -> None:
    async def main() -> None:
        b = MicroBatcher(lambda images: [], max_batch=2, max_wait_s=0, max_queue=2)
        b.start()
        try:
            b.submit(np.zeros((1, 1, 3), np.uint8))
            b.submit(np.zeros((1, 1, 3), np.uint8))
            with pytest.raises(Overloaded) as exc:
                b.submit(np.zeros((1, 1, 3), np.uint8))
            shed = from_exception(exc.value)
            assert shed is not None and shed.status_code == 503
            assert shed.headers["Retry-After"] == "1"
        finally:
            await b.stop()

    asyncio.run(main())


def test_micro_batcher_reports_model_failure_to_every_caller() -> None:
    def broken(images: Any) -> list[ScoreResult]:
        raise RuntimeError("model crashed")

    async def main() -> list[BaseException | ScoreResult]:
        b = MicroBatcher(broken, max_batch=8, max_wait_s=0, max_queue=8)
        b.start()
        try:
            futs = [b.submit(encode_pixels()) for _ in range(3)]
            return await asyncio.gather(*futs, return_exceptions=True)
        finally:
            await b.stop()

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)


def encode_pixels() -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.asarray(quadrants(8, 8))


@pytest.mark.model
def test_claims_lease_several_items_at_once_in_claim_order(
    client: httpx.Client, reviewers: httpx.Client
) -> None:
    """POST /v1/review/claims: a reviewer's tool prefetching; each item leased on its own."""
    held = [classify(client, fresh_astronaut(), account="acct-batch").json()["review_item_id"]
            for _ in range(3)]
    dana = {"X-Reviewer": "dana"}
    error(reviewers.post("/v1/review/claims", headers=dana, json={"count": 0}), 422,
          "request.invalid")
    error(reviewers.post("/v1/review/claims", headers=dana, json={"count": 51}), 422,
          "request.invalid")
    taken: list[dict[str, Any]] = []
    while True:  # other tests' items may wait in the queue too: take everything
        r = reviewers.post("/v1/review/claims", headers=dana, json={"queue": "demo", "count": 2})
        if r.status_code == 404:
            assert r.json()["code"] == "review.queue_empty"
            break
        assert r.status_code == 200, r.text
        assert 1 <= len(r.json()["items"]) <= 2
        taken.extend(r.json()["items"])
    ids = [i["id"] for i in taken]
    assert set(held) <= set(ids) and len(ids) == len(set(ids))
    assert {(i["status"], i["claimed_by"]) for i in taken} == {("claimed", "dana")}
    assert [i["id"] for i in taken if i["id"] in held] == held  # same priority: oldest first
    for i in ids:  # give them back for the other tests
        assert reviewers.post(f"/v1/review/items/{i}/release", headers=dana).status_code == 200
