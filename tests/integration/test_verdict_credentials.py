"""Issue 16, in the system of record: each verdict records the credential it came through, one
credential never supplies two verdicts of one item (Python and the database), delegate verdicts
are marked in the statement of reasons, and the audit chain carries the credential."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from review import ReviewError, SameCredential
from review.db import Database
from review.schema import AuditEvent, VerdictRow
from review.service import ReviewService, utcnow
from tests.review_support import ACTIONS, record

SEVERE: dict[str, Any] = dict(queue="severe", severity="critical", reviewers_required=2,
                              proposed=ACTIONS["critical"])


def _decide(svc: ReviewService, db: Database, reviewer: str, item: int, **kw: Any) -> Any:
    with db.transaction() as s:
        svc.claim(s, reviewer_id=reviewer, item_id=item)
        return svc.decide(s, item_id=item, reviewer_id=reviewer, verdict="violating",
                          categories=("cat.critical",), **kw)


def _item(svc: ReviewService, db: Database, n: int) -> tuple[int, str]:
    with db.transaction() as s:
        r = record(svc, s, n, **SEVERE)
    assert r.item_id is not None
    return r.item_id, r.decision_id


def test_one_console_naming_two_reviewers_cannot_make_two_people(
    seeded: Database, svc: ReviewService
) -> None:
    item, decision = _item(svc, seeded, 1)
    first = _decide(svc, seeded, "sam", item, credential="key:9", delegate=True)
    assert str(first.status) == "awaiting_second"
    with pytest.raises(SameCredential) as refusal:
        _decide(svc, seeded, "sue", item, credential="key:9", delegate=True)
    assert refusal.value.code == "review.same_credential"
    with seeded.transaction() as s:  # nothing of the refused verdict was written
        rows = s.execute(select(VerdictRow).where(VerdictRow.item_id == item)).scalars().all()
        assert [(v.reviewer_id, v.credential, v.via_delegate) for v in rows] == [
            ("sam", "key:9", True)]
        actions = svc.list_actions(s, decision_id=decision)
        assert actions and {a["status"] for a in actions} == {"proposed"}
    # the second person through their own door completes it
    done = _decide(svc, seeded, "sue", item, credential="oidc:abc")
    assert str(done.status) == "decided"
    with seeded.transaction() as s:
        approved = [a for a in svc.list_actions(s, decision_id=decision)
                    if a["status"] in ("approved", "notified")]
        assert approved
        statement = svc.statement_of_reasons(s, decision)
        events = s.execute(select(AuditEvent).where(AuditEvent.event == "verdict.recorded")
                           .order_by(AuditEvent.seq)).scalars().all()
        approve = s.execute(select(AuditEvent).where(AuditEvent.event == "action.approve")
                            ).scalars().first()
    marks = [(v["reviewer"], v["via_delegate"]) for v in statement["reviews"][0]["verdicts"]]
    assert marks == [("sam", True), ("sue", False)]
    assert [(e.data["credential"], e.data["delegate"]) for e in events] == [
        ("key:9", True), ("oidc:abc", False)]
    assert approve is not None and approve.data["credentials"] == ["key:9", "oidc:abc"]


def test_in_process_callers_get_a_direct_credential_per_reviewer(
    seeded: Database, svc: ReviewService
) -> None:
    item, _ = _item(svc, seeded, 2)
    _decide(svc, seeded, "sam", item)
    assert str(_decide(svc, seeded, "sue", item).status) == "decided"
    with seeded.transaction() as s:
        creds = s.execute(select(VerdictRow.credential).where(VerdictRow.item_id == item)
                          .order_by(VerdictRow.id)).scalars().all()
    assert creds == ["direct:sam", "direct:sue"]


def test_a_malformed_credential_is_refused(seeded: Database, svc: ReviewService) -> None:
    item, _ = _item(svc, seeded, 3)
    with pytest.raises(ReviewError, match="credential id"):
        _decide(svc, seeded, "sam", item, credential="no-colon")


def test_delegate_keys_are_refused_in_production_unless_allowed(seeded: Database) -> None:
    from pipeline.apikeys import DelegateKeyRefused, Scope, create_key
    from pipeline.settings import Settings
    from review import UnknownReviewer

    secrets = {f"{n}": "x" * 32 for n in ("webhook_secret", "signing_key",
                                         "labelstudio_webhook_secret",
                                         "labelstudio_admin_password")}
    production = Settings(environment="production", **secrets)
    assert not production.delegate_keys_allowed
    assert Settings(environment="production", allow_delegate_keys=True,
                    **secrets).delegate_keys_allowed
    assert Settings().delegate_keys_allowed  # development
    now = utcnow()
    with seeded.transaction() as s:
        with pytest.raises(DelegateKeyRefused) as refusal:
            create_key(s, name="console", scopes=["review", "delegate"], now=now,
                       allow_delegate=production.delegate_keys_allowed)
        assert refusal.value.code == "keys.delegate_refused"
        with pytest.raises(DelegateKeyRefused):  # a bound key is never a delegate
            create_key(s, name="sam", scopes=["review", "delegate"], reviewer="sam", now=now,
                       allow_delegate=True)
        with pytest.raises(UnknownReviewer):
            create_key(s, name="ghost", scopes=["review"], reviewer="ghost", now=now)
        info, _ = create_key(s, name="console", scopes=["review", "delegate"], now=now,
                             allow_delegate=True)
        assert info.allows(Scope.DELEGATE) and info.principal().reviewer is None
        bound, _ = create_key(s, name="sam", scopes=["admin"], reviewer="sam", now=now)
        assert not bound.allows(Scope.DELEGATE)  # admin never implies it
        assert bound.principal().bound and bound.principal().credential == f"key:{bound.id}"
