"""End to end in a real browser: a reviewer logs in to Label Studio, opens the next task, sees
the blurred preview and the reasons, chooses a verdict and submits; the verdict lands in
lookfirst's store within seconds and the approved actions follow the policy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.labelstudio import task_worker
from review.schema import LabelStudioAnnotation
from tests.labelstudio.conftest import REVIEWER_PASSWORD, Stack
from tests.labelstudio.test_sync import task_of


def test_reviewer_decides_in_label_studio(
    stack: Stack, browser: Any, page: Any, artifacts: Path
) -> None:
    projects = stack.sync.setup().projects
    item = stack.flag(42, audience="public")
    with stack.rt.db.transaction() as s:
        stack.sync.enqueue_tasks(s)
    worker = task_worker(stack.sync)
    worker.run_once()
    worker.close()
    tid = task_of(stack, item)
    ls = stack.ls.url

    # a reviewer joins through the organisation's invite link, as people do. The sign-up has
    # a browser context of its own, closed before the log-in: Label Studio refreshes the
    # session cookie on every response, so a request still in flight from the sign-up page
    # could set it again after clear_cookies() (CI saw /user/login/ redirect to / that way)
    invite = stack.admin().organizations.invites.get_invite_link().invite_url
    email = f"rita-{tid}@reviewers.test"
    signup_ctx = browser.new_context()
    try:
        signup = signup_ctx.new_page()
        signup.set_default_timeout(90_000)
        signup.goto(f"{ls}{invite}" if invite.startswith("/") else invite)
        signup.fill("#email", email)
        signup.fill("#password", REVIEWER_PASSWORD)
        signup.locator("button[type=submit], input[type=submit]").first.click()
        signup.wait_for_url(lambda u: "/user/signup" not in u, timeout=30_000)
    finally:
        signup_ctx.close()
    uid = stack.sync.client.user_id_for(email)
    assert uid is not None
    with stack.rt.db.transaction() as s:
        stack.sync.map_reviewer(s, email=email, reviewer_id="alice", ls_user_id=uid)
    page.goto(f"{ls}/user/login/")
    page.fill("#email", email)
    page.fill("#password", REVIEWER_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda u: "/user/login" not in u, timeout=30_000)
    page.goto(f"{ls}/projects/{projects['adult']}/data?task={tid}")
    img = page.locator('img[src*="/v1/previews/"]').first
    img.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].some("
        "i => i.src.includes('/v1/previews/') && i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    page.get_by_text("nudity.explicit.review", exact=False).first.wait_for(timeout=15_000)
    page.screenshot(path=str(artifacts / "task-view.png"), full_page=True)

    page.locator('label.lsf-choice__checkbox:has(input[name="violating"])').first.click()
    page.locator('input[name="nudity.explicit"]').first.check(force=True)
    page.get_by_test_id("textarea-input").first.fill("explicit; no medical context")
    page.get_by_test_id("textarea-input").first.press("Shift+Enter")
    page.screenshot(path=str(artifacts / "task-filled.png"), full_page=True)
    t0 = time.monotonic()
    page.get_by_test_id("bottombar-submit-button").click()

    row = None
    while time.monotonic() - t0 < 10:
        with stack.rt.db.transaction() as s:
            row = s.query(LabelStudioAnnotation).filter_by(item_id=item).one_or_none()
            if row is not None:
                break
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    page.screenshot(path=str(artifacts / "after-submit.png"), full_page=True)
    assert row is not None, "the verdict did not reach lookfirst within 10 s"
    assert row.status == "recorded" and row.reviewer_id == "alice", row.code
    with stack.rt.db.transaction() as s:
        view = stack.rt.review.show(s, item, viewer=None)
        assert view.status == "decided"
        kinds = {a["kind"]: a["status"] for a in
                 stack.rt.review.list_actions(s, decision_id=view.decision_id)}
    # nudity.explicit is severity high: the policy maps a violating verdict to these
    expected = set(stack.rt.policy.actions_for_verdict("violating", ["nudity.explicit"]))
    approved = {k for k, st in kinds.items() if st in ("approved", "notified", "executed")}
    assert expected <= approved
    print(f"\nverdict in lookfirst {elapsed:.2f} s after the click (via {row.via})")
