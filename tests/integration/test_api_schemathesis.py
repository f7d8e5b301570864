"""schemathesis over the whole OpenAPI schema, against the live server: no response is a 5xx,
and every response matches what the schema says (status codes, content types, bodies,
headers); requests that break the schema are refused.

The server runs the real pipeline with the pixel-statistics scorer (fast and deterministic),
and an admin key, so every route is reachable.  A generated request may revoke the very key
the test uses (POST /v1/keys/{id}/revoke is in the schema): the test then mints a new one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hostile import encode, quadrants
from tests.integration.api_conftest_helpers import ApiServer

pytestmark = pytest.mark.api_server(scorer="pixel",
                                    env={"LOOKFIRST_API_RATE_PER_MINUTE": "10000000"})

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]

class Admin:
    """The admin key in use; replaced when a generated request revokes it."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.key = api.new_key("admin", name="schemathesis")
        self.minted = 1

    def headers(self) -> dict[str, str]:
        # both ways of sending a key, so neither is left to the generator
        return {"Authorization": f"Bearer {self.key}", "X-API-Key": self.key}

    def check(self, response_status: int) -> None:
        if response_status == 401:
            r = httpx.get(f"{self.api.url}/v1/keys", headers=self.headers())
            if r.status_code == 401:
                self.key = self.api.new_key("admin", name="schemathesis")
                self.minted += 1


@pytest.fixture(scope="module")
def admin(api: ApiServer) -> Admin:
    # Something to find: a reviewer named in the schema's examples, and decisions in queues.
    api.add_reviewer("dana", ["adult", "qa", "appeals"])
    a = Admin(api)
    with api.client(a.key) as c:
        for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (10, 10, 10)]):
            img = quadrants(32, 32)
            img[:] = colour
            r = c.post("/v1/classify", files={"file": ("a.png", encode(img, "PNG"))},
                       data={"account_id": "acct-st", "upload_id": f"seed-{i}"})
            assert r.status_code == 200, r.text
    return a


@pytest.fixture(scope="module")
def api_schema(api: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


# (schemathesis's pytest plugin, `from_fixture`, does not run under pytest 9, so the test drives
# its Python API: one hypothesis run per operation and generation mode.)
MAX_EXAMPLES = 25
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def _runner(
    op: schemathesis.APIOperation, mode: GenerationMode, api: ApiServer, admin: Admin,
    statuses: Counter[tuple[str, int]],
) -> Callable[[], None]:
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=api.url, headers=admin.headers(),
                                          checks=CHECKS)
        statuses[(op.label, response.status_code)] += 1
        admin.check(response.status_code)

    return run


def test_openapi_contract(
    api: ApiServer, admin: Admin, api_schema: schemathesis.BaseSchema
) -> None:
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for op in operations:
        for mode in MODES:
            try:
                _runner(op, mode, api, admin, statuses)()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to get wrong in a bare GET
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # collect every operation's failures, then report all
                failures.append(f"{op.label} [{mode.value}]: {type(exc).__name__}: "
                                f"{str(exc)[:2000]}")
    total = sum(statuses.values())
    by_class = Counter(f"{status // 100}xx" for (_, status) in statuses.elements())
    print(f"\nschemathesis: {len(operations)} operations, {total} requests, "
          f"statuses {dict(sorted(by_class.items()))}, failures {len(failures)}, "
          f"admin keys minted {admin.minted}")
    for (label, status), n in sorted(statuses.items()):
        print(f"  {label:<45} {status} x{n}")
    assert not failures, "\n\n".join(failures)
    assert total > 300 and by_class["5xx"] == 0
