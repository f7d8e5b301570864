"""Setup, tasks out through the outbox, verdicts back by webhook and by the poller, against a
real Label Studio server and a real uvicorn."""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

import httpx
from sqlalchemy import select

from pipeline.delivery import WebhookSink
from pipeline.labelstudio import SECRET_HEADER, TOPIC, status, task_worker
from review.outbox import DeliveryPolicy, OutboxWorker, enqueue, list_rows
from review.schema import AuditEvent, LabelStudioAnnotation, LabelStudioTask, Outbox, VerdictRow
from tests.labelstudio.conftest import Stack


def annotate(stack: Stack, task_id: int, user: str, verdict: str,
             categories: tuple[str, ...] = (), note: str = "") -> int:
    """Submit an annotation as a Label Studio user would (the API, with that user's id)."""
    result: list[dict[str, Any]] = [
        {"from_name": "verdict", "to_name": "preview", "type": "choices",
         "value": {"choices": [verdict]}}]
    if categories:
        result.append({"from_name": "categories", "to_name": "preview", "type": "choices",
                       "value": {"choices": list(categories)}})
    if note:
        result.append({"from_name": "notes", "to_name": "preview", "type": "textarea",
                       "value": {"text": [note]}})
    a = stack.admin().annotations.create(task_id, result=result,
                                         completed_by=stack.users[user])
    return int(a.id)


def push_all(stack: Stack) -> None:
    with stack.rt.db.transaction() as s:
        stack.sync.enqueue_tasks(s)
    worker = task_worker(stack.sync, policy=DeliveryPolicy(base_delay=dt.timedelta(seconds=0.1)))
    try:
        worker.run_once(limit=500)
    finally:
        worker.close()


def task_of(stack: Stack, item_id: int) -> int:
    with stack.rt.db.transaction() as s:
        row = s.get(LabelStudioTask, item_id)
        assert row is not None
        return row.task_id


def test_setup_is_idempotent_and_validated(stack: Stack) -> None:
    first = stack.sync.setup()
    assert set(first.created) == set(stack.rt.policy.queues)
    assert first.webhooks_created == len(stack.rt.policy.queues)
    second = stack.sync.setup()
    assert second.created == [] and second.updated == [] and second.webhooks_created == 0
    assert second.projects == first.projects
    sdk = stack.admin()
    severe = sdk.projects.get(first.projects["severe"])
    adult = sdk.projects.get(first.projects["adult"])
    assert severe.maximum_annotations == 2 and adult.maximum_annotations == 1
    cfg = adult.label_config
    for word in ("need_more_context", "benign_medical", "nudity.explicit", "proposed_action",
                 'name="notes"'):
        assert word in cfg


def test_tasks_carry_preview_reasons_and_predictions(stack: Stack) -> None:
    stack.sync.setup()
    item = stack.flag(1, audience="public", account_age_days=3)
    push_all(stack)
    push_all(stack)  # a second round creates nothing
    tid = task_of(stack, item)
    sdk = stack.admin()
    task = sdk.tasks.get(tid)
    data = task.data
    assert data["item_id"] == item
    assert "nudity.explicit.review" in data["reasons_text"]
    assert "account_age_days: 3" in data["context_text"]
    preds = sdk.predictions.list(task=tid)
    assert preds and preds[0].model_version.startswith("nudenet-320n@")
    assert 0.59 < float(preds[0].score) < 0.61
    # the preview: signed, CORS for Label Studio's origin, re-encoded greyscale JPEG
    r = httpx.get(data["preview"], headers={"Origin": stack.ls.url})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["access-control-allow-origin"] == stack.ls.url
    from PIL import Image

    assert Image.open(io.BytesIO(r.content)).mode == "L"
    assert httpx.get(data["preview"]).status_code == 200  # not single-use
    bad = data["preview"][:-3] + ("AAA" if not data["preview"].endswith("AAA") else "BBB")
    assert httpx.get(bad).status_code == 403
    # the original: a separate link; a named, entitled reviewer; audited
    orig = data["reveal_html"].split('href="')[1].split('"')[0]
    assert httpx.get(orig.replace("/originals/", "/previews/")).status_code == 403
    assert "recorded in the audit log" in httpx.get(orig).text
    assert httpx.get(orig, params={"reviewer": "bob", "reason": "x"}).status_code == 403
    ok = httpx.get(orig, params={"reviewer": "alice", "reason": "blur hides the context"})
    assert ok.status_code == 200 and ok.content == stack.rt.blobs.get(_sha(stack, item))
    with stack.rt.db.transaction() as s:
        reveals = s.execute(select(AuditEvent).where(AuditEvent.event ==
                                                     "item.reveal_original")).scalars().all()
        assert [e.actor for e in reveals] == ["alice"]
        assert s.execute(select(Outbox).where(Outbox.topic == TOPIC)).scalars().one().status \
            == "delivered"


def _sha(stack: Stack, item: int) -> str:
    with stack.rt.db.transaction() as s:
        return stack.rt.review.show(s, item, viewer=None).content_sha256


def test_webhook_and_poller_record_each_annotation_once(stack: Stack) -> None:
    stack.sync.setup()
    items = [stack.flag(i) for i in range(3)]
    push_all(stack)
    tasks = [task_of(stack, i) for i in items]
    # alice's annotation arrives by webhook (Label Studio posts it inside the create request)
    a0 = annotate(stack, tasks[0], "alice", "violating", ("nudity.explicit",), "clear case")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with stack.rt.db.transaction() as s:
            if s.get(LabelStudioAnnotation, a0) is not None:
                break
        time.sleep(0.2)
    with stack.rt.db.transaction() as s:
        row = s.get(LabelStudioAnnotation, a0)
        assert row is not None and row.status == "recorded" and row.via == "webhook"
        v = s.get(VerdictRow, row.verdict_id)
        assert v is not None and v.reviewer_id == "alice" and v.verdict == "violating"
        view = stack.rt.review.show(s, items[0], viewer=None)
        assert view.status == "decided"
    # mallory (a Label Studio login, no lookfirst reviewer) and bob (not entitled to adult)
    a1 = annotate(stack, tasks[1], "mallory", "benign")
    a2 = annotate(stack, tasks[2], "bob", "benign")
    rep1 = stack.sync.poll()
    rep2 = stack.sync.poll()
    assert rep1.error is None and rep2.recorded == 0 and rep2.refused == 0
    # a replayed webhook changes nothing
    r = httpx.post(stack.sync.webhook_url, headers={SECRET_HEADER: "test-webhook-secret"},
                   json={"action": "ANNOTATION_CREATED", "task": {"id": tasks[0]},
                         "annotation": {"id": a0, "completed_by": stack.users["alice"],
                                        "result": []}})
    assert r.status_code == 202
    assert httpx.post(stack.sync.webhook_url, json={"action": "ANNOTATION_CREATED"}
                      ).status_code == 401
    time.sleep(0.5)
    with stack.rt.db.transaction() as s:
        rows = {a.annotation_id: a for a in s.execute(select(LabelStudioAnnotation)).scalars()}
        assert rows[a1].status == "refused" and rows[a1].code == "labelstudio.unknown_user"
        assert rows[a2].status == "refused" and rows[a2].code == "review.not_entitled"
        assert s.execute(select(VerdictRow)).scalars().all().__len__() == 1
        flagged = s.execute(select(AuditEvent).where(
            AuditEvent.event == "labelstudio.annotation_refused")).scalars().all()
        assert len(flagged) == 2
        for i in items[1:]:
            assert stack.rt.review.show(s, i, viewer=None).status == "pending"
    st = status(stack.rt)
    assert st["annotations"] == {"recorded": 1, "refused": 2}
    assert st["outbox"]["pending"] == 0 and st["tasks"] == 3


def test_two_person_queue_needs_two_distinct_entitled_reviewers(stack: Stack) -> None:
    stack.sync.setup()
    item = stack.flag(7, scores={"nudity.explicit": 0.99})
    with stack.rt.db.transaction() as s:
        # route it to the two-person queue the way a bank match would
        from review.schema import ReviewItem

        it = s.get(ReviewItem, item)
        assert it is not None
        it.queue, it.reviewers_required = "severe", 2
    push_all(stack)
    tid = task_of(stack, item)
    annotate(stack, tid, "sam", "violating", ("nudity.explicit",))
    stack.sync.poll()
    with stack.rt.db.transaction() as s:
        assert stack.rt.review.show(s, item, viewer=None).status == "awaiting_second"
    annotate(stack, tid, "sue", "violating", ("nudity.explicit",))
    stack.sync.poll()
    with stack.rt.db.transaction() as s:
        view = stack.rt.review.show(s, item, viewer=None)
        assert view.status == "decided"
        actions = stack.rt.review.list_actions(s, decision_id=view.decision_id)
        approved = {a["kind"]: a for a in actions if a["status"] in ("approved", "notified")}
        assert "remove_content" in approved
        assert set(approved["remove_content"]["approvers"]) == {"sam", "sue"}
        # issue 16: each verdict came through its Label Studio account
        from sqlalchemy import select

        from review.schema import VerdictRow

        doors = s.execute(select(VerdictRow.credential, VerdictRow.via_delegate)
                          .where(VerdictRow.item_id == item).order_by(VerdictRow.id)).all()
        assert len({c for c, _ in doors}) == 2, doors
        assert all(c.startswith("labelstudio:") and not d for c, d in doors), doors


def test_the_task_sink_answers_per_message_through_the_outbox(stack: Stack) -> None:
    """Created; nothing to show (decided in lookfirst meanwhile: delivered, no task); or failed
    with its reason, retried, then dead.  The platform's worker never takes these messages."""
    projects = stack.sync.setup().projects
    shown, decided = stack.flag(7), stack.flag(8)
    with stack.rt.db.transaction() as s:
        assert stack.sync.enqueue_tasks(s) == 2
        enqueue(s, topic=TOPIC, key=f"{TOPIC}:stray", now=stack.rt.review.clock(),
                payload={"item_id": 10**9, "queue": "no-such-queue"})
    with stack.rt.db.transaction() as s:
        stack.rt.review.claim(s, reviewer_id="alice", queue="adult", item_id=decided)
        stack.rt.review.decide(s, item_id=decided, reviewer_id="alice", verdict="benign")
    platform = OutboxWorker(stack.rt.db, WebhookSink(url="http://127.0.0.1:9/", secret="x"))
    try:
        assert all(m.topic != TOPIC for m in platform.lease(limit=1000))
    finally:
        platform.close()

    worker = task_worker(stack.sync, policy=DeliveryPolicy(
        max_attempts=2, base_delay=dt.timedelta(seconds=0.05),
        max_delay=dt.timedelta(seconds=0.1)))
    try:
        first = worker.run_once(limit=50)
        assert (first.leased, first.delivered, first.retried, first.dead) == (3, 2, 1, 0)
        time.sleep(0.3)  # past the stray message's backoff
        second = worker.run_once(limit=50)
        assert (second.leased, second.dead) == (1, 1)
    finally:
        worker.close()
    with stack.rt.db.transaction() as s:
        (dead,) = list_rows(s, status="dead")
        assert s.get(LabelStudioTask, decided) is None
    assert dead["key"] == f"{TOPIC}:stray"
    assert dead["last_error"] == "no Label Studio project for queue no-such-queue"
    assert stack.sync.client.task_items(projects["adult"]) == {shown: [task_of(stack, shown)]}
    assert status(stack.rt)["outbox"] == {"pending": 0, "delivered": 2, "dead": 1}
