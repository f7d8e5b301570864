"""Issue 16 through the live API: two people means two authenticated people.

The server is a real uvicorn process (the pixel scorer, the default policy) configured for a
local OpenID Connect issuer (tests/oidc_issuer.py: keys the tests make, a real JWKS endpoint).
An image in the `violating` hash bank goes to the two-person `severe` queue, as in the issue.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from review import add_to_bank, utcnow
from review.db import Database
from review.schema import AuditEvent, VerdictRow
from tests.hostile import encode
from tests.integration.api_conftest_helpers import ApiServer, running
from tests.oidc_issuer import AUDIENCE, LocalIssuer, make_key

VIOLATING = ["nudity.explicit"]


@pytest.fixture(scope="module")
def api(idp: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    env = {
        "LOOKFIRST_API_RATE_PER_MINUTE": "10000000", "LOOKFIRST_API_KEY_CACHE_S": "0",
        "LOOKFIRST_OIDC_ISSUER": idp.url, "LOOKFIRST_OIDC_AUDIENCE": AUDIENCE,
        "LOOKFIRST_OIDC_JWKS_URL": idp.jwks_url,
        "LOOKFIRST_OIDC_REVIEWER_CLAIM": "preferred_username",
    }
    yield from running(tmp_path_factory.mktemp("identity"), scorer="pixel", env=env)


@pytest.fixture(scope="module")
def people(api: ApiServer) -> dict[str, str]:
    """r1 and r2 (senior reviewers of the severe queue), each with their own review key."""
    for r in ("r1", "r2"):
        api.add_reviewer(r, ["severe", "senior"], roles=["senior"])
    return {r: api.key("review", name=f"own-{r}", reviewer=r) for r in ("r1", "r2")}


def _db(api: ApiServer) -> Database:
    return Database(api.db_url)


def severe_item(api: ApiServer) -> dict[str, Any]:
    """A fresh upload whose bytes are in the `violating` bank: the severe, two-person queue."""
    pixels = np.full((24, 24, 3), (255, 0, 0), np.uint8)
    pixels[0, 0] = np.frombuffer(uuid.uuid4().bytes[:3], np.uint8)
    data = encode(pixels, "PNG")
    db = _db(api)
    try:
        with db.transaction() as s:
            add_to_bank(s, bank="violating", value=hashlib.sha256(data).hexdigest(),
                        source="test", actor="test", at=utcnow())
    finally:
        db.dispose()
    with api.client(api.key("classify")) as c:
        r = c.post("/v1/classify", files={"file": ("x.png", data)},
                   data={"account_id": "acct-id", "upload_id": f"u-{uuid.uuid4()}"})
    assert r.status_code == 200, r.text
    d = dict(r.json())
    assert d["queue"] == "severe" and d["review_item_id"], d
    return d


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def claim(api: ApiServer, headers: dict[str, str], item: int) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/review/claim", headers=headers, json={"item_id": item},
                      timeout=30)


def verdict(api: ApiServer, headers: dict[str, str], item: int) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/review/items/{item}/verdict", headers=headers,
                      json={"verdict": "violating", "categories": VIOLATING}, timeout=30)


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code, r.text


def actions(api: ApiServer, decision_id: str) -> dict[str, str]:
    with api.client(api.key("admin")) as c:
        sor = c.get(f"/v1/decisions/{decision_id}")
    assert sor.status_code == 200, sor.text
    return {a["kind"]: a["status"] for a in sor.json()["actions"]}


def recorded(api: ApiServer, item: int) -> tuple[int, int]:
    """(verdicts on the item, audit events in all): what a refused request must not change."""
    db = _db(api)
    try:
        with db.transaction() as s:
            return (s.execute(select(func.count()).select_from(VerdictRow)
                              .where(VerdictRow.item_id == item)).scalar_one(),
                    s.execute(select(func.count()).select_from(AuditEvent)).scalar_one())
    finally:
        db.dispose()


def credentials_of(api: ApiServer, item: int) -> list[tuple[str, str, bool]]:
    db = _db(api)
    try:
        with db.transaction() as s:
            rows = s.execute(select(VerdictRow).where(VerdictRow.item_id == item)
                             .order_by(VerdictRow.id)).scalars().all()
            return [(v.reviewer_id, v.credential, v.via_delegate) for v in rows]
    finally:
        db.dispose()


def decided(api: ApiServer, d: dict[str, Any]) -> None:
    """Two verdicts in: as in the issue, remove_content approved and suspend notified (waiting
    out its notice); nothing is left proposed."""
    done = actions(api, d["decision_id"])
    assert (done["remove_content"], done["suspend"]) == ("approved", "notified"), done
    assert "proposed" not in done.values(), done


# ---- the scenario, rewritten ------------------------------------------------------------
def test_one_key_naming_two_reviewers_cannot_approve_a_two_person_item(
    api: ApiServer, people: dict[str, str]
) -> None:
    d = severe_item(api)
    item = int(d["review_item_id"])
    # the key: review-scoped, bound to no one; naming a reviewer is refused outright
    plain = bearer(api.key("review", name="plain-review"))
    refused(claim(api, {**plain, "X-Reviewer": "r1"}, item), 403, "auth.delegate_required")
    # a console's delegate key may act for the reviewers it names, through one door
    console = bearer(api.key("review", "delegate", name="console"))
    assert claim(api, {**console, "X-Reviewer": "r1"}, item).status_code == 200
    first = verdict(api, {**console, "X-Reviewer": "r1"}, item)
    assert first.status_code == 200 and first.json()["status"] == "awaiting_second", first.text
    assert claim(api, {**console, "X-Reviewer": "r2"}, item).status_code == 200
    before = recorded(api, item)
    refused(verdict(api, {**console, "X-Reviewer": "r2"}, item), 403, "review.same_credential")
    assert recorded(api, item) == before
    waiting = actions(api, d["decision_id"])  # the automated hold is executed; nothing approved
    assert "proposed" in waiting.values() and not {"approved", "notified"} & set(waiting.values())
    # r1's own key cannot name r2 either
    refused(verdict(api, {**bearer(people["r1"]), "X-Reviewer": "r2"}, item), 403,
            "auth.reviewer_bound")
    # r2 through r2's own key (the lease is r2's): two people, two doors
    second = verdict(api, bearer(people["r2"]), item)
    assert second.status_code == 200 and second.json()["status"] == "decided", second.text
    decided(api, d)
    creds = credentials_of(api, item)
    assert [(r, delegate) for r, _, delegate in creds] == [("r1", True), ("r2", False)]
    assert creds[0][1] != creds[1][1] and all(c.startswith("key:") for _, c, _ in creds)
    # the statement of reasons marks the delegate's verdict
    with api.client(api.key("admin")) as c:
        sor = c.get(f"/v1/decisions/{d['decision_id']}").json()
    marks = [(v["reviewer"], v["via_delegate"]) for v in sor["reviews"][0]["verdicts"]]
    assert marks == [("r1", True), ("r2", False)]


def test_two_reviewers_with_their_own_keys_can(api: ApiServer, people: dict[str, str]) -> None:
    d = severe_item(api)
    item = int(d["review_item_id"])
    for r in ("r1", "r2"):
        own = bearer(people[r])
        assert claim(api, own, item).status_code == 200
        # naming oneself is harmless and allowed
        res = verdict(api, {**own, "X-Reviewer": r}, item)
        assert res.status_code == 200, res.text
    assert res.json()["status"] == "decided"
    decided(api, d)
    assert [r for r, _, _ in credentials_of(api, item)] == ["r1", "r2"]


def test_two_oidc_tokens_can_and_one_account_cannot_be_two(
    api: ApiServer, idp: LocalIssuer, people: dict[str, str]
) -> None:
    d = severe_item(api)
    item = int(d["review_item_id"])
    key = idp.keys["rsa-1"]
    t1 = bearer(idp.token(key, idp.claims("r1")))
    assert claim(api, t1, item).status_code == 200
    assert verdict(api, t1, item).json()["status"] == "awaiting_second"
    # the same identity-provider account with a fresh token is the same door, even when a
    # misconfigured claim would name r2: the credential is (issuer, subject)
    same_account = bearer(idp.token(key, idp.claims("r2", sub="user-r1")))
    assert claim(api, same_account, item).status_code == 200
    refused(verdict(api, same_account, item), 403, "review.same_credential")
    t2 = bearer(idp.token(key, idp.claims("r2")))
    res = verdict(api, t2, item)
    assert res.status_code == 200 and res.json()["status"] == "decided", res.text
    decided(api, d)
    creds = credentials_of(api, item)
    assert [r for r, _, _ in creds] == ["r1", "r2"]
    assert all(c.startswith("oidc:") and "user-" not in c for _, c, _ in creds)
    # a reviewer's token reads the statement of reasons too
    assert httpx.get(f"{api.url}/v1/decisions/{d['decision_id']}", headers=t2).status_code == 200
    # a token is its reviewer's own: it names no one else
    refused(httpx.get(f"{api.url}/v1/review/items", headers={**t2, "X-Reviewer": "r1"}),
            403, "auth.reviewer_bound")


# ---- the auth matrix of reviewer principals: refused at the door, nothing recorded -------------
@pytest.fixture(scope="module")
def waiting(api: ApiServer, people: dict[str, str]) -> int:
    """A severe item leased to r1 (through r1's own key): every refusal below would be r1's
    verdict if it got through."""
    item = int(severe_item(api)["review_item_id"])
    assert claim(api, bearer(people["r1"]), item).status_code == 200
    return item


def _bad(api: ApiServer, idp: LocalIssuer, case: str) -> dict[str, str]:
    key = idp.keys["rsa-1"]
    now = time.time()
    if case == "expired":
        return bearer(idp.token(key, idp.claims("r1", now=now - 3600)))
    if case == "wrong_audience":
        return bearer(idp.token(key, idp.claims("r1", aud="another-service")))
    if case == "wrong_issuer":
        return bearer(idp.token(key, idp.claims("r1", iss="https://idp.example.org")))
    if case == "bad_signature":
        return bearer(idp.token(make_key("rsa", kid="rsa-1"), idp.claims("r1")))
    if case == "unknown_reviewer":
        return bearer(idp.token(key, idp.claims("nobody")))
    if case == "revoked_key":
        raw = api.new_key("review", name="revoked-r1", reviewer="r1")
        with api.client(api.key("admin")) as c:
            kid = next(k["id"] for k in c.get("/v1/keys").json() if k["name"] == "revoked-r1")
            assert c.post(f"/v1/keys/{kid}/revoke").status_code == 200
        return bearer(raw)
    if case == "delegate_without_scope":
        return {**bearer(api.key("review", name="plain-review")), "X-Reviewer": "r1"}
    if case == "own_key_naming_another":
        return {**bearer(api.key("review", name="own-r2", reviewer="r2")), "X-Reviewer": "r1"}
    if case == "admin_naming_a_reviewer":
        return {**bearer(api.key("admin")), "X-Reviewer": "r1"}
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "status", "code"), [
    ("expired", 401, "auth.token_expired"),
    ("wrong_audience", 401, "auth.token_audience"),
    ("wrong_issuer", 401, "auth.token_issuer"),
    ("bad_signature", 401, "auth.token_signature"),
    ("unknown_reviewer", 403, "auth.unknown_reviewer"),
    ("revoked_key", 401, "auth.invalid"),
    ("delegate_without_scope", 403, "auth.delegate_required"),
    ("own_key_naming_another", 403, "auth.reviewer_bound"),
    ("admin_naming_a_reviewer", 403, "auth.delegate_required"),
])
def test_refused_credentials_record_nothing(
    api: ApiServer, idp: LocalIssuer, waiting: int, case: str, status: int, code: str
) -> None:
    headers = _bad(api, idp, case)
    before = recorded(api, waiting)
    refused(verdict(api, headers, waiting), status, code)
    assert recorded(api, waiting) == before


def test_a_verdict_through_a_valid_token_after_the_refusals(
    api: ApiServer, idp: LocalIssuer, waiting: int
) -> None:
    """Control for the matrix: the same request with r1's valid token goes through."""
    res = verdict(api, bearer(idp.token(idp.keys["rsa-1"], idp.claims("r1"))), waiting)
    assert res.status_code == 200 and res.json()["status"] == "awaiting_second", res.text


# ---- keys bound to reviewers, delegate keys ------------------------------------------------------
def test_keys_api_binds_a_key_to_a_reviewer_and_refuses_bound_delegates(
    api: ApiServer, people: dict[str, str]
) -> None:
    with api.client(api.key("admin")) as c:
        made = c.post("/v1/keys", json={"name": "r1-laptop", "scopes": ["review"],
                                        "reviewer": "r1"})
        assert made.status_code == 201 and made.json()["reviewer"] == "r1", made.text
        refused(c.post("/v1/keys", json={"name": "x", "scopes": ["review", "delegate"],
                                         "reviewer": "r1"}), 403, "keys.delegate_refused")
        refused(c.post("/v1/keys", json={"name": "x", "scopes": ["review"],
                                         "reviewer": "ghost"}), 403, "review.unknown_reviewer")
        # development mode: a delegate key may be made (production refuses: test_settings)
        assert c.post("/v1/keys", json={"name": "console", "scopes": ["review", "delegate"]}
                      ).status_code == 201
    listed = httpx.get(f"{api.url}/v1/review/items", headers=bearer(made.json()["key"]))
    assert listed.status_code == 200, listed.text
    # making and revoking keys is audited, naming the principal that did it
    with api.client(api.key("admin")) as c:
        assert c.post(f"/v1/keys/{made.json()['id']}/revoke").status_code == 200
    db = _db(api)
    try:
        with db.transaction() as s:
            evs = s.execute(select(AuditEvent).where(
                AuditEvent.subject_type == "api_key",
                AuditEvent.subject_id == str(made.json()["id"])).order_by(AuditEvent.seq)
            ).scalars().all()
    finally:
        db.dispose()
    assert [e.event for e in evs] == ["api_key.created", "api_key.revoked"]
    assert all(e.data["principal"]["credential"].startswith("key:") for e in evs)
    assert evs[0].data["reviewer"] == "r1" and made.json()["key"] not in json.dumps(evs[0].data)



# ---- signed preview and reveal links ------------------------------------------------------------
def _link(api: ApiServer, kind: str, d: dict[str, Any], **kw: Any) -> str:
    from pipeline.previews import sign_link
    from pipeline.settings import DEV_SECRET

    with api.client(api.key("admin")) as c:
        sha = c.get(f"/v1/decisions/{d['decision_id']}").json()["upload"]["content_sha256"]
    args: dict[str, Any] = dict(kind=kind, item_id=int(d["review_item_id"]), sha256=sha,
                                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    args.update(kw)
    return sign_link(DEV_SECRET, **args)


def _splice(token: str, **changes: Any) -> str:
    """The token's body edited, its signature kept: what someone without the key can do."""
    body, sig = token.split(".")
    raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw.update(changes)
    edited = base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode())
    return f"{edited.rstrip(b'=').decode()}.{sig}"


@pytest.mark.parametrize("kind", ["previews", "originals"])
def test_links_refuse_expired_tampered_and_replayed_for_another_item(
    api: ApiServer, people: dict[str, str], kind: str
) -> None:
    a, b = severe_item(api), severe_item(api)
    link_kind = kind.rstrip("s") if kind == "previews" else "original"
    good = _link(api, link_kind, a)
    query = "?reviewer=r1&reason=checking" if kind == "originals" else ""
    assert httpx.get(f"{api.url}/v1/{kind}/{good}{query}").status_code == 200
    cases = {
        "link.expired": _link(api, link_kind, a,
                              expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)),
        # a's link pointed at b by editing the token: the signature no longer matches
        "link.invalid": _splice(good, i=int(b["review_item_id"])),
    }
    with api.client(api.key("admin")) as c:
        sha_b = c.get(f"/v1/decisions/{b['decision_id']}").json()["upload"]["content_sha256"]
    cases["link.mismatch"] = _link(api, link_kind, a, sha256=sha_b)  # b's image, a's item
    before = recorded(api, int(a["review_item_id"]))
    for code, token in cases.items():
        refused(httpx.get(f"{api.url}/v1/{kind}/{token}{query}"), 403, code)
    refused(httpx.get(f"{api.url}/v1/{kind}/{good[:-2]}xx{query}"), 403, "link.invalid")
    # a preview link never opens the original (nor the reverse)
    other = "originals" if kind == "previews" else "previews"
    refused(httpx.get(f"{api.url}/v1/{other}/{good}?reviewer=r1&reason=x"), 403, "link.invalid")
    # the good request above was the only reveal: refusals record nothing
    assert recorded(api, int(a["review_item_id"])) == before


def test_a_reveal_records_the_link_it_came_through(api: ApiServer,
                                                   people: dict[str, str]) -> None:
    d = severe_item(api)
    token = _link(api, "original", d)
    r = httpx.get(f"{api.url}/v1/originals/{token}?reviewer=r2&reason=verify%20match")
    assert r.status_code == 200, r.text
    db = _db(api)
    try:
        with db.transaction() as s:
            ev = s.execute(select(AuditEvent).where(
                AuditEvent.event == "item.reveal_original",
                AuditEvent.subject_id == str(d["review_item_id"]))).scalars().one()
    finally:
        db.dispose()
    assert ev.actor == "r2" and ev.data["reason"] == "verify match"
    assert ev.data["credential"].startswith("link:") and ev.data["delegate"] is True
    assert token not in json.dumps(ev.data)
