"""Production mode and delegate keys (issue 16), against a live server started with
LOOKFIRST_ENVIRONMENT=production: a delegate key is neither made nor accepted unless
LOOKFIRST_ALLOW_DELEGATE_KEYS says so; reviewers' own keys work as anywhere."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.api_conftest_helpers import ApiServer

pytestmark = pytest.mark.api_server(scorer="pixel", env={
    "LOOKFIRST_ENVIRONMENT": "production",
    "LOOKFIRST_WEBHOOK_SECRET": "w" * 32, "LOOKFIRST_SIGNING_KEY": "s" * 32,
    "LOOKFIRST_LABELSTUDIO_WEBHOOK_SECRET": "l" * 32,
    "LOOKFIRST_LABELSTUDIO_ADMIN_PASSWORD": "p" * 32,
    "LOOKFIRST_API_KEY_CACHE_S": "0",
})


def test_production_neither_makes_nor_accepts_delegate_keys(api: ApiServer) -> None:
    api.add_reviewer("dana", ["adult"])
    with api.client(api.key("admin")) as admin:
        made = admin.post("/v1/keys", json={"name": "console",
                                            "scopes": ["review", "delegate"]})
        assert made.status_code == 403 and made.json()["code"] == "keys.delegate_refused"
        own = admin.post("/v1/keys", json={"name": "dana", "scopes": ["review"],
                                           "reviewer": "dana"})
        assert own.status_code == 201, own.text
    # a delegate key that exists anyway (made before production mode) is refused at the door
    legacy = api.new_key("review", "delegate", name="legacy-console")
    r = httpx.get(f"{api.url}/v1/review/items",
                  headers={"Authorization": f"Bearer {legacy}", "X-Reviewer": "dana"})
    assert r.status_code == 403 and r.json()["code"] == "keys.delegate_refused", r.text
    r = httpx.get(f"{api.url}/v1/review/items",
                  headers={"Authorization": f"Bearer {own.json()['key']}"})
    assert r.status_code == 200, r.text
