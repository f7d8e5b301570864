"""The false-positive rate people see, by context segment: flagged uploads decided benign, on
/metrics of a real uvicorn and in `review stats`, and the grouped count behind both on SQLite
and PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.learning.segments import SEGMENT_FIELDS, false_positive_rates
from review import Database, ReviewService, flagged_decided, iter_traffic, reviewed_decisions
from tests.integration.api_conftest_helpers import ROOT, ApiServer, running
from tests.review_support import record, routing, seed_reviewers, sha, upload
from tests.synthetic import invoke, make_app

DEFAULT_POLICY = ROOT / "pipeline" / "policies" / "default.yaml"


def red(share: float) -> bytes:
    """An image the test scorer gives nudity.explicit = `share` (saturated red pixels), with a
    random corner so each upload is new content."""
    rng = np.random.default_rng(uuid.uuid4().int % 2**32)
    img = np.full((40, 50, 3), 128, np.uint8)
    img[: int(40 * share), :] = (230, 20, 20)
    img[-2:, -2:] = rng.integers(0, 100, (2, 2, 3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from running(tmp_path_factory.mktemp("fp"), scorer="pixel",
                       env={"LOOKFIRST_POLICY_PATH": str(DEFAULT_POLICY)})


def metric(text: str, name: str, segment: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{segment="{segment}"}} '):
            return float(line.split()[-1])
    return None


def test_false_positive_rate_on_metrics_and_in_review_stats(
    api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_reviewer("mia", ["adult", "medical", "qa"], roles=["medical"])
    plan = [  # (medically shared, what the reviewer finds)
        (True, "benign_medical"), (True, "benign_medical"), (True, "benign_medical"),
        (True, "violating"), (False, "benign"), (False, "violating"), (False, "violating"),
    ]
    mia = {"X-Reviewer": "mia"}
    with api.client(api.key("classify")) as c, api.client(api.key("review", reviewer="mia")) as r:
        # before any verdict: counts are zero, and a rate with nothing decided is absent
        text = httpx.get(f"{api.url}/metrics").text
        assert metric(text, "lookfirst_review_flagged_decided", "all") == 0
        assert metric(text, "lookfirst_review_false_positive_rate", "all") is None
        for medical, verdict in plan:
            d = c.post("/v1/classify", files={"file": ("x.png", red(0.8), "image/png")},
                       data={"account_id": "acct-fp", "upload_id": uuid.uuid4().hex,
                             "medical_sharing": str(medical).lower()}).json()
            assert d["outcome"] in ("review", "hold"), d
            item = d["review_item_id"]
            assert r.post("/v1/review/claim", headers=mia, json={"item_id": item}
                          ).status_code == 200
            body = {"verdict": verdict,
                    **({"categories": ["nudity.explicit"]} if verdict == "violating" else {})}
            v = r.post(f"/v1/review/items/{item}/verdict", headers=mia, json=body)
            assert v.status_code == 200 and v.json()["status"] == "decided", v.text
        # an allowed upload is not flagged: it never counts, whatever QA finds
        allowed = c.post("/v1/classify", files={"file": ("y.png", red(0.0), "image/png")},
                         data={"account_id": "acct-fp", "upload_id": uuid.uuid4().hex}).json()
        assert allowed["outcome"] == "allow"
    text = httpx.get(f"{api.url}/metrics").text
    expected = {"all": (7, 4), "medical_sharing=true": (4, 3), "medical_sharing=false": (3, 1),
                "audience=private": (7, 4), "audience=public": (0, 0)}
    for seg, (decided, benign) in expected.items():
        assert metric(text, "lookfirst_review_flagged_decided", seg) == decided, seg
        assert metric(text, "lookfirst_review_false_positives", seg) == benign, seg
    assert metric(text, "lookfirst_review_false_positive_rate", "medical_sharing=true") == 0.75
    assert metric(text, "lookfirst_review_false_positive_rate", "medical_sharing=false") == \
        pytest.approx(1 / 3)
    assert metric(text, "lookfirst_review_false_positive_rate", "audience=public") is None

    # the same figures from the CLI, per segment and per queue
    for k, v in api.env.items():
        if k.startswith("LOOKFIRST_"):
            monkeypatch.setenv(k, v)
    res = invoke(make_app(), "review", "stats", "--json")
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    segs = {s["segment"]: s for s in stats["false_positives"]["segments"]}
    assert segs["medical_sharing=true"] == {"segment": "medical_sharing=true", "decided": 4,
                                            "benign": 3, "rate": 0.75}
    queues = {q["queue"]: q for q in stats["queues"]}
    assert (queues["medical"]["flagged_decided"], queues["medical"]["false_positives"]) == (4, 3)
    assert (queues["adult"]["flagged_decided"], queues["adult"]["false_positives"]) == (3, 1)
    res = invoke(make_app(), "review", "stats")
    assert res.exit_code == 0 and "False positives by context segment" in res.output
    assert "75.0%" in res.output


def test_flagged_counts_group_by_context_on_both_backends(db: Database,
                                                          svc: ReviewService) -> None:
    with db.transaction() as s:
        seed_reviewers(svc, s)
    contexts = [{"medical_sharing": True, "audience": "public"}, {"medical_sharing": True},
                {"medical_sharing": False, "audience": "followers"}, {}]
    verdicts = ["benign_medical", "violating", "benign", "benign"]
    items = []
    with db.transaction() as s:
        for n, ctx in enumerate(contexts):
            new = upload(n, **ctx)
            if n == 0:  # hashed at ingest
                new = replace(new, pdq="ab" * 32, pdq_quality=87)
            r = svc.record(s, new,
                           routing(queue="adult", severity="low", proposed=("remove_content",)))
            items.append(r.item_id)
        record(svc, s, "qa-sample", outcome="allow", queue="qa", qa=True)  # never counted
    for item, verdict in zip(items, verdicts, strict=True):
        with db.transaction() as s:
            svc.claim(s, reviewer_id="alice", item_id=item)
            svc.decide(s, item_id=item, reviewer_id="alice", verdict=verdict,
                       categories=["cat.low"] if verdict == "violating" else [])
    with db.transaction() as s:
        rows = flagged_decided(s, fields=SEGMENT_FIELDS)
        assert sum(r.decided for r in rows) == 4
        # values come back as JSON values (booleans, strings), absent ones as None
        seen = {(r.context["medical_sharing"], r.context["audience"]) for r in rows}
        assert seen == {(True, "public"), (True, None), (False, "followers"), (None, None)}
        rates = {x.segment: (x.decided, x.benign) for x in false_positive_rates(rows)}
        # a context without medical_sharing counts as not medically shared
        assert rates["medical_sharing=true"] == (2, 1)
        assert rates["medical_sharing=false"] == (2, 2)
        assert rates["audience=private"] == (2, 1) and rates["audience=public"] == (1, 1)
        assert sum(r.decided for r in flagged_decided(s, fields=["medical_sharing"],
                                                      since=svc.clock())) == 4
        # the export's and the comparison's reads of the same record
        reviewed = {d.content_sha256: d for d in reviewed_decisions(s)}
        assert set(reviewed) == {sha(n) for n in range(4)}
        one = reviewed[sha(1)]
        assert one.items[0].resolution == "violating"
        assert one.items[0].verdicts[0].categories == ("cat.low",)
        # the content's stored PDQ hash comes with it (the export's cross-check)
        assert (reviewed[sha(0)].content_pdq, reviewed[sha(0)].content_pdq_quality) == (
            "ab" * 32, 87)
        assert (one.content_pdq, one.content_pdq_quality) == (None, None)
        # every decision once, in (time, id) order, across batches of equal times
        traffic = list(iter_traffic(s, batch=2))
        assert sorted(map(str, (t.resolution for t in traffic))) == sorted(
            [*verdicts, "None"])
        assert len({t.decision_id for t in traffic}) == 5
        assert [t.decision_id for t in iter_traffic(s, limit=3, batch=2)] == [
            t.decision_id for t in traffic[:3]]
