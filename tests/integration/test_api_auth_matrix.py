"""Who may call what: every route x {no key, an invalid key, a revoked key, each scope} against
the live server, written out as one table.  Each cell sends a request that is otherwise valid
(fresh records are made for it), so a 2xx means "let through" and 401/403 means "stopped at
the door", never "refused for another reason".

The server runs the real pipeline with the pixel-statistics scorer: a saturated red picture
scores nudity.explicit 1.0, which the default policy holds for review.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import numpy as np
import pytest

from pipeline.previews import sign_link
from pipeline.settings import DEV_SECRET
from tests.hostile import encode
from tests.integration.api_conftest_helpers import ApiServer

pytestmark = pytest.mark.api_server(
    scorer="pixel",
    env={"LOOKFIRST_API_RATE_PER_MINUTE": "10000000", "LOOKFIRST_API_KEY_CACHE_S": "0"},
)

# "review" is dana's own key (`keys create --reviewer dana --scope review`); "delegate" a console's
# key (review and delegate scopes) that names dana in X-Reviewer.  Admin does not imply delegate:
# an admin key naming a reviewer is refused (403 auth.delegate_required).
COLUMNS: Final = ("none", "invalid", "revoked", "classify", "review", "appeal", "admin",
                  "delegate")

# route (method, template)            none invalid revoked classify review appeal admin delegate
MATRIX: Final[list[tuple[str, str, tuple[int, ...]]]] = [
    ("POST", "/v1/classify",                      (401, 401, 401, 200, 403, 403, 200, 403)),
    ("GET", "/v1/decisions/{decision_id}",        (401, 401, 401, 200, 200, 200, 200, 200)),
    ("POST", "/v1/decisions/{decision_id}/context", (401, 401, 401, 403, 403, 201, 201, 403)),
    ("POST", "/v1/appeals",                       (401, 401, 401, 403, 403, 201, 201, 403)),
    ("GET", "/v1/review/items",                   (401, 401, 401, 403, 200, 403, 403, 200)),
    ("GET", "/v1/review/items/{item_id}",         (401, 401, 401, 403, 200, 403, 403, 200)),
    ("POST", "/v1/review/claim",                  (401, 401, 401, 403, 200, 403, 403, 200)),
    ("POST", "/v1/review/claims",                 (401, 401, 401, 403, 200, 403, 403, 200)),
    ("POST", "/v1/review/items/{item_id}/verdict", (401, 401, 401, 403, 200, 403, 403, 200)),
    ("POST", "/v1/review/items/{item_id}/release", (401, 401, 401, 403, 200, 403, 403, 200)),
    ("GET", "/v1/review/items/{item_id}/cluster",
                                                  (401, 401, 401, 403, 200, 403, 403, 200)),
    ("POST", "/v1/review/items/{item_id}/cluster-verdict",
                                                  (401, 401, 401, 403, 200, 403, 403, 200)),
    ("POST", "/v1/review/bank-matches/{decision_id}",
                                                  (401, 401, 401, 403, 200, 403, 403, 200)),
    ("GET", "/v1/review/stats",                   (401, 401, 401, 403, 200, 403, 200, 200)),
    ("GET", "/v1/keys",                           (401, 401, 401, 403, 403, 403, 200, 403)),
    ("POST", "/v1/keys",                          (401, 401, 401, 403, 403, 403, 201, 403)),
    ("POST", "/v1/keys/{key_id}/revoke",          (401, 401, 401, 403, 403, 403, 200, 403)),
    # a signed, expiring link is the credential here; an API key neither grants nor refuses
    ("GET", "/v1/previews/{token}",               (200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/v1/originals/{token}",              (200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/health/live",                       (200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/health/ready",                      (200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/metrics",                           (200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/openapi.json",                      (200, 200, 200, 200, 200, 200, 200, 200)),
    ("GET", "/docs",                              (200, 200, 200, 200, 200, 200, 200, 200)),
]
CODES: Final = {401: ("auth.missing", "auth.invalid"),
                 403: ("auth.forbidden", "auth.delegate_required")}


def _red_png() -> bytes:
    """A saturated red picture, unique each time: once a reviewer clears one, the cleared-benign
    bank (rightly) stops the same bytes from being flagged again."""
    pixels = np.full((24, 24, 3), (255, 0, 0), np.uint8)
    pixels[0, 0] = np.frombuffer(uuid.uuid4().bytes[:3], np.uint8)
    return encode(pixels, "PNG")


def _red_blocks() -> bytes:
    """Saturated red in random blocks: held like `_red_png`, and textured enough for a PDQ hash
    of full quality (each call another picture, so no clearance covers the next)."""
    rng = np.random.default_rng()
    blocks = np.stack([rng.integers(201, 256, (16, 16)), rng.integers(0, 60, (16, 16)),
                       rng.integers(0, 60, (16, 16))], axis=-1).astype(np.uint8)
    return encode(np.ascontiguousarray(np.kron(blocks, np.ones((8, 8, 1), np.uint8))), "PNG")



DANA: Final = {"X-Reviewer": "dana"}


@dataclass
class Call:
    method: str
    path: str
    kw: dict[str, Any]


class Fixtures:
    """Makes, with the admin key, the records a cell's request needs."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.admin = api.client(api.key("admin"))
        #: a console's delegate key, for the acts that prepare a cell as dana
        self.desk = api.client(api.key("review", "delegate", name="desk"))
        self._matched: str | None = None

    def held(self, data: bytes | None = None) -> dict[str, Any]:
        """A fresh upload the policy held: its decision is appealable, its item claimable."""
        r = self.admin.post("/v1/classify", files={"file": ("x.png", data or _red_png())},
                            data={"account_id": "acct-m", "upload_id": f"m-{uuid.uuid4()}"})
        assert r.status_code == 200 and r.json()["outcome"] == "hold", r.text
        return dict(r.json())

    def claimed_by_dana(self, data: bytes | None = None) -> int:
        item = int(self.held(data)["review_item_id"])
        r = self.desk.post("/v1/review/claim", headers=DANA, json={"item_id": item})
        assert r.status_code == 200, r.text
        return item

    def noticed(self) -> str:
        """A decision whose approved suspension waits out its notice period for the user's reply."""
        d = self.held()
        self.desk.post("/v1/review/claim", headers=DANA, json={"item_id": d["review_item_id"]})
        r = self.desk.post(f"/v1/review/items/{d['review_item_id']}/verdict", headers=DANA,
                            json={"verdict": "violating", "categories": ["nudity.explicit"]})
        assert r.status_code == 200, r.text
        assert "notified" in {a["status"] for a in r.json()["actions"]}, r.text
        return str(d["decision_id"])

    def bank_matched(self) -> str:
        """A decision routed by a violating PDQ entry (imported with the CLI), once."""
        if self._matched is None:
            import subprocess
            import sys

            from pipeline.hashing.pdq import pdq_hash
            from pipeline.ingest import ingest_bytes
            from tests.hostile import LIMITS

            data = _red_blocks()
            pixels = ingest_bytes(data, max_bytes=LIMITS["max_bytes"],
                                  max_pixels=LIMITS["max_pixels"]).pixels
            listed = self.api.data_dir / "matrix-list.pdq"
            listed.write_text(pdq_hash(pixels).hex + "\n")
            subprocess.run([sys.executable, "-m", "pipeline.cli", "banks", "import", str(listed),
                            "--format", "pdq"], env={**self.api.env}, check=True,
                           capture_output=True, timeout=120)
            d = self.held(data)
            assert d["reasons"]["bank"]["bank"] == "violating", d
            self._matched = str(d["decision_id"])
        return self._matched

    def spare_key(self) -> int:
        r = self.admin.post("/v1/keys", json={"name": "spare", "scopes": ["classify"]})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def link(self, kind: Literal["preview", "original"]) -> str:
        held = self.held()
        sor = self.admin.get(f"/v1/decisions/{held['decision_id']}").json()
        return sign_link(DEV_SECRET, kind=kind, item_id=held["review_item_id"],
                         sha256=sor["upload"]["content_sha256"],
                         expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))

    def call(self, method: str, template: str) -> Call:
        builders: dict[str, Callable[[], Call]] = {
            "/v1/classify": lambda: Call(method, template, {
                "files": {"file": ("x.png", _red_png())},
                "data": {"account_id": "acct-m", "upload_id": f"c-{uuid.uuid4()}"}}),
            "/v1/decisions/{decision_id}": lambda: Call(
                method, f"/v1/decisions/{self.held()['decision_id']}", {}),
            "/v1/decisions/{decision_id}/context": lambda: Call(
                method, f"/v1/decisions/{self.noticed()}/context",
                {"json": {"statement": "I sent it to my doctor",
                          "context": {"medical_sharing": True}}}),
            "/v1/appeals": lambda: Call(method, template, {"json": {
                "decision_id": self.held()["decision_id"], "statement": "please look again"}}),
            "/v1/review/items": lambda: Call(method, template, {"headers": DANA}),
            "/v1/review/items/{item_id}": lambda: Call(
                method, f"/v1/review/items/{self.held()['review_item_id']}", {"headers": DANA}),
            "/v1/review/claim": lambda: Call(method, template, {
                "headers": DANA, "json": {"item_id": self.held()["review_item_id"]}}),
            # something held, so the batch has at least one item to lease
            "/v1/review/claims": lambda: (self.held(), Call(method, template, {
                "headers": DANA, "json": {"count": 2}}))[1],
            "/v1/review/items/{item_id}/verdict": lambda: Call(
                method, f"/v1/review/items/{self.claimed_by_dana()}/verdict",
                {"headers": DANA, "json": {"verdict": "benign", "note": "matrix"}}),
            "/v1/review/items/{item_id}/release": lambda: Call(
                method, f"/v1/review/items/{self.claimed_by_dana()}/release", {"headers": DANA}),
            "/v1/review/items/{item_id}/cluster": lambda: Call(
                method, f"/v1/review/items/{self.held(_red_blocks())['review_item_id']}/cluster",
                {"headers": DANA}),
            "/v1/review/items/{item_id}/cluster-verdict": lambda: Call(
                method, f"/v1/review/items/{self.claimed_by_dana(_red_blocks())}/cluster-verdict",
                {"headers": DANA, "json": {"verdict": "benign", "note": "matrix"}}),
            "/v1/review/bank-matches/{decision_id}": lambda: Call(
                method, f"/v1/review/bank-matches/{self.bank_matched()}",
                {"headers": DANA, "json": {"verdict": "confirmed"}}),
            "/v1/keys": lambda: Call(method, template, {"json": {"name": "made", "scopes": [
                "review"]}} if method == "POST" else {}),
            "/v1/keys/{key_id}/revoke": lambda: Call(
                method, f"/v1/keys/{self.spare_key()}/revoke", {}),
            "/v1/previews/{token}": lambda: Call(
                method, f"/v1/previews/{self.link('preview')}", {}),
            # without a reviewer and a reason the link answers with the form that asks for them
            "/v1/originals/{token}": lambda: Call(
                method, f"/v1/originals/{self.link('original')}", {}),
        }
        return builders.get(template, lambda: Call(method, template, {}))()


@pytest.fixture(scope="module")
def fixtures(api: ApiServer) -> Iterator[Fixtures]:
    api.add_reviewer("dana", ["adult", "qa", "appeals"])
    f = Fixtures(api)
    yield f
    f.admin.close()
    f.desk.close()


@pytest.fixture(scope="module")
def credentials(api: ApiServer, fixtures: Fixtures) -> dict[str, dict[str, str]]:
    revoked = api.new_key("classify", "review", "appeal", "admin", name="revoked")
    listed = fixtures.admin.get("/v1/keys").json()
    revoked_id = next(k["id"] for k in listed if k["name"] == "revoked")
    assert fixtures.admin.post(f"/v1/keys/{revoked_id}/revoke").status_code == 200
    bearer = {c: {"Authorization": f"Bearer {api.key(c, name=f'matrix-{c}')}"}
              for c in ("classify", "appeal", "admin")}
    bearer["review"] = {"Authorization": "Bearer " + api.key("review", name="matrix-dana",
                                                             reviewer="dana")}
    bearer["delegate"] = {"Authorization": "Bearer " + api.key("review", "delegate",
                                                               name="matrix-delegate")}
    return {
        "none": {},
        "invalid": {"Authorization": "Bearer lf_abcdefgh_" + "A" * 43},
        "revoked": {"X-API-Key": revoked},
        **bearer,
    }


def test_the_table_names_every_route(api: ApiServer) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    in_schema = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    in_table = {(m, p) for m, p, _ in MATRIX}
    assert in_schema <= in_table, sorted(in_schema - in_table)
    assert all(len(row) == len(COLUMNS) for _, _, row in MATRIX)


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize(("method", "template", "row"), MATRIX,
                         ids=[f"{m} {p}" for m, p, _ in MATRIX])
def test_authorisation_matrix(
    method: str, template: str, row: tuple[int, ...], column: str, api: ApiServer,
    fixtures: Fixtures, credentials: dict[str, dict[str, str]],
) -> None:
    expected = row[COLUMNS.index(column)]
    call = fixtures.call(method, template)
    headers = {**call.kw.pop("headers", {}), **credentials[column]}
    with httpx.Client(base_url=api.url, timeout=30) as c:
        r = c.request(method, call.path, headers=headers, **call.kw)
    assert r.status_code == expected, (column, r.status_code, r.text)
    if expected in CODES:
        assert r.json()["code"] in CODES[expected], r.text
        if column == "none":
            assert r.json()["code"] == "auth.missing"
        elif expected == 401:
            assert r.json()["code"] == "auth.invalid"
