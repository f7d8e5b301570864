"""Refusals that say why and what to do, through the REST API (a real uvicorn, a real SQLite
database, the pixel-statistics scorer under the default policy): an upload id scored again
with another context (409 upload.context_conflict), a claim without the queue's role, and the
fresh-eyes rule on appeals (issue 17)."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.api_conftest_helpers import ApiServer

pytestmark = pytest.mark.api_server(scorer="pixel", env={"LOOKFIRST_NOTICE_PERIOD_HOURS": "0"},
                                    client_scopes=("classify", "appeal"))


def red_png() -> bytes:
    """70% saturated red: the pixel scorer's nudity.explicit 0.7, which the default policy
    sends to review (to the medical queue when shared with a doctor); a fresh image each call."""
    px = np.zeros((40, 40, 3), np.uint8)
    px[:28, :, 0] = 255
    px[28:, :, 1] = np.random.default_rng().integers(0, 50, size=(12, 40), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def classify(c: httpx.Client, data: bytes, upload: str, **context: str) -> httpx.Response:
    return c.post("/v1/classify", files={"file": ("x.png", data, "image/png")},
                  data={"account_id": "acct-r", "upload_id": upload, **context})


def refused(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert set(body) == {"code", "detail"} and body["code"] == code, body
    return str(body["detail"])


def test_a_repeated_upload_id_with_another_context_is_refused(client: httpx.Client) -> None:
    up, data = f"up-{uuid.uuid4().hex[:8]}", red_png()
    first = classify(client, data, up, medical_sharing="true")
    assert first.status_code == 200, first.text
    assert first.json()["queue"] == "medical" and first.json()["already_scored"] is False
    again = classify(client, data, up, medical_sharing="true")  # same context: idempotent
    assert again.status_code == 200 and again.json()["already_scored"] is True
    assert again.json()["decision_id"] == first.json()["decision_id"]
    detail = refused(classify(client, data, up), 409, "upload.context_conflict")
    assert "medical_sharing=true" in detail  # the stored context
    assert "this request says medical_sharing=false" in detail
    assert "new upload id" in detail and "upload_id" in detail and "--upload-id" in detail
    # what it says to do works: a new upload id scores the image with the new context
    new = classify(client, data, up + "-2")
    assert new.status_code == 200 and new.json()["queue"] == "adult"


def test_claim_refusals_say_why(api: ApiServer, client: httpx.Client) -> None:
    api.add_reviewer("bob", ["medical"])  # a member of the queue, without its role
    api.add_reviewer("carol", ["medical", "appeals"], roles=["medical"])
    first = classify(client, red_png(), f"up-{uuid.uuid4().hex[:8]}", medical_sharing="true")
    d = first.json()
    with api.client(api.key("review", "delegate")) as rc:  # a console acting for each
        detail = refused(rc.post("/v1/review/claim", headers={"X-Reviewer": "bob"}, json={}),
                         403, "review.not_entitled")
        assert "wait in queue 'medical', which needs role 'medical' that 'bob' lacks" in detail \
            or "waits in queue 'medical', which needs role 'medical' that 'bob' lacks" in detail
        assert "lookfirst reviewers grant bob --role medical" in detail
        detail = refused(rc.post("/v1/review/claim", headers={"X-Reviewer": "bob"},
                                 json={"item_id": d["review_item_id"]}), 403,
                         "review.not_entitled")
        assert "needs role 'medical'" in detail

        carol = {"X-Reviewer": "carol"}
        got = rc.post("/v1/review/claim", headers=carol, json={"item_id": d["review_item_id"]})
        assert got.status_code == 200, got.text
        v = rc.post(f"/v1/review/items/{d['review_item_id']}/verdict", headers=carol,
                    json={"verdict": "violating", "categories": ["nudity.explicit"]})
        assert v.status_code == 200, v.text
        ap = client.post("/v1/appeals", json={"decision_id": d["decision_id"],
                                               "statement": "it was for my doctor"})
        assert ap.status_code == 201, ap.text
        appeal_item = ap.json()["item_id"]
        detail = refused(rc.post("/v1/review/claim", headers=carol,
                                 json={"item_id": appeal_item}), 403, "review.fresh_eyes")
        assert "you decided the original; another reviewer must take the appeal" in detail
        detail = refused(rc.post("/v1/review/claim", headers=carol, json={"queue": "appeals"}),
                         404, "review.queue_empty")
        assert "the fresh-eyes rule" in detail
