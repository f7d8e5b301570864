"""PDQ hash banks in the review store and the bank matcher, on real SQLite and PostgreSQL: the
matcher catches up incrementally with changes another process committed; expiry and scope;
flood quarantine and false-match demotion, each audited; benign verdicts add the content's
PDQ in the verdict's transaction; a violating verdict overrules the clearance that routed it.
The photos are sample photos the tests edit (tests/photos.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from sqlalchemy import select

from pipeline.banks import BankHit, BankMatcher, Query
from pipeline.hashing.pdq import DihedralPdq, pdq_dihedral
from review import (
    Database,
    NewUpload,
    NoUsablePdq,
    ReviewService,
    Routing,
    add_to_bank,
    judge_bank_match,
    remove_bank_entry,
)
from review import audit as audit_log
from review.schema import AuditEvent, BankEntry
from tests.photos import decode, greyscale, half_size, reshared, sample
from tests.review_support import FakeClock, make_config, seed_reviewers


def pdq_of(data_or_pixels: Any) -> DihedralPdq:
    pixels = decode(data_or_pixels) if isinstance(data_or_pixels, bytes) else data_or_pixels
    return pdq_dihedral(pixels)


COFFEE = pdq_of(sample("coffee"))
COFFEE_COPY = pdq_of(reshared(sample("coffee"), half_size, quality=30))
ROCKET_GREY = pdq_of(reshared(sample("rocket"), greyscale))
CHELSEA = pdq_of(sample("chelsea"))


def add_pdq(db: Database, clock: FakeClock, bank: str, pdq: DihedralPdq, **kw: Any) -> int:
    with db.transaction() as s:
        entry = add_to_bank(s, bank=bank, kind="pdq", value=pdq.original.hex,
                            quality=pdq.quality, source="test list", actor="op:test",
                            at=clock(), **kw)
    assert entry is not None
    return entry


def match(m: BankMatcher, db: Database, clock: FakeClock, pdq: DihedralPdq,
          account: str = "acct-1", sha: str = "0" * 64) -> Any:
    with db.transaction() as s:
        return m.match(s, Query(sha256=sha, account_id=account, pdq=pdq), at=clock())


def events(db: Database, event: str) -> list[AuditEvent]:
    with db.transaction() as s:
        rows = s.execute(select(AuditEvent).where(AuditEvent.event == event)
                         .order_by(AuditEvent.at, AuditEvent.chain, AuditEvent.seq)).scalars().all()
        s.expunge_all()
        return list(rows)


def test_matchers_catch_up_with_changes_made_elsewhere(db: Database, clock: FakeClock) -> None:
    api, batch = BankMatcher(), BankMatcher()  # two processes' matchers, one database
    assert match(api, db, clock, COFFEE_COPY) is None
    entry = add_pdq(db, clock, "violating", COFFEE)
    for m in (api, batch):
        hit = match(m, db, clock, COFFEE_COPY)
        assert hit is not None and hit.entry_id == entry and hit.bank == "violating"
        assert 0 < hit.distance <= 31 and hit.kind == "pdq"
        assert match(m, db, clock, CHELSEA) is None  # another photo
    with db.transaction() as s:
        remove_bank_entry(s, entry, actor="op:test", at=clock(), reason="withdrawn by source")
    assert match(api, db, clock, COFFEE_COPY) is None
    assert match(batch, db, clock, COFFEE_COPY) is None
    assert [e.subject_id for e in events(db, "bank.removed")] == [str(entry)]
    # a restarted process builds its index from the database: the removal holds
    assert match(BankMatcher(), db, clock, COFFEE_COPY) is None


def test_expiry_scope_and_the_quality_floor(db: Database, clock: FakeClock) -> None:
    m = BankMatcher()
    add_pdq(db, clock, "cleared_benign", ROCKET_GREY, scope_account="acct-1",
            expires_at=clock() + dt.timedelta(days=1))
    assert match(m, db, clock, ROCKET_GREY, "acct-1") is not None
    assert match(m, db, clock, ROCKET_GREY, "acct-2") is None  # scoped to acct-1
    assert match(BankMatcher(cross_account=True), db, clock, ROCKET_GREY, "acct-2") is not None
    low = DihedralPdq(ROCKET_GREY.hashes, 49)  # the same bits, below the quality floor
    assert match(m, db, clock, low, "acct-1") is None
    clock.advance(days=2)
    assert match(m, db, clock, ROCKET_GREY, "acct-1") is None  # expired


def test_violating_wins_over_a_clearance(db: Database, clock: FakeClock) -> None:
    m = BankMatcher()
    add_pdq(db, clock, "cleared_benign", COFFEE)
    bad = add_pdq(db, clock, "violating", COFFEE_COPY)
    hit = match(m, db, clock, COFFEE)
    assert hit.entry_id == bad and hit.bank == "violating"


def _routing(bank: dict[str, Any] | None, outcome: str = "review") -> Routing:
    return Routing(outcome=outcome, queue="adult" if outcome != "allow" else None,
                   severity="high", priority=60, reviewers_required=1, proposed_actions=(),
                   qa_sample=False, scores={"cat.high": 0.9},
                   reasons={"rules": [], **({"bank": bank} if bank else {})},
                   model_version="test-model@sha256:000000000000", policy_version="test-1")


def _upload(n: int, pdq: DihedralPdq | None, account: str = "acct-1") -> NewUpload:
    return NewUpload(account_id=account, external_id=f"up-{n}", source="test", context={},
                     sha256=f"{n:064x}", mime="image/jpeg", width=10, height=10,
                     size_bytes=100, pdq=pdq.original.hex if pdq else None,
                     pdq_quality=pdq.quality if pdq else None)


def test_flood_quarantine_is_audited(db: Database, clock: FakeClock) -> None:
    svc = ReviewService(make_config(bank_flood_limit=2,
                                    bank_flood_window=dt.timedelta(minutes=10)), clock=clock)
    m = BankMatcher()
    entry = add_pdq(db, clock, "violating", COFFEE)
    for n in range(1, 4):
        hit = match(m, db, clock, COFFEE_COPY)
        assert hit is not None, n
        with db.transaction() as s:
            svc.record(s, _upload(n, COFFEE_COPY), _routing(hit.as_reason()))
        clock.advance(seconds=30)
    # the third match within ten minutes is one too many: quarantined, no longer matching
    assert match(m, db, clock, COFFEE_COPY) is None
    (ev,) = events(db, "bank.quarantined")
    assert ev.subject_id == str(entry) and ev.actor == "system:flood"
    assert ev.data["matches"] == 3 and ev.data["limit"] == 2
    with db.transaction() as s:
        assert s.get(BankEntry, entry).state == "quarantined"  # type: ignore[union-attr]
        assert audit_log.verify(s).ok


def test_a_match_marked_false_demotes_its_entry(db: Database, clock: FakeClock) -> None:
    svc = ReviewService(make_config(), clock=clock)
    m = BankMatcher()
    entry = add_pdq(db, clock, "violating", COFFEE)
    hit = match(m, db, clock, COFFEE_COPY)
    with db.transaction() as s:
        rec = svc.record(s, _upload(1, COFFEE_COPY), _routing(hit.as_reason()))
    with db.transaction() as s:
        out = judge_bank_match(s, decision_id=rec.decision_id, entry_id=None, verdict="false",
                               actor="reviewer:alice", at=clock(), note="a coffee cup")
    assert [e["state"] for e in out["entries"]] == ["demoted"]
    assert match(m, db, clock, COFFEE_COPY) is None
    (false,) = events(db, "bank.match_false")
    (demoted,) = events(db, "bank.demoted")
    assert false.actor == demoted.actor == "reviewer:alice"
    assert demoted.subject_id == str(entry) and demoted.data["to"] == "demoted"
    with db.transaction() as s:
        assert audit_log.verify(s).ok


def test_benign_verdict_clears_and_a_later_violating_verdict_overrules(
    db: Database, clock: FakeClock
) -> None:
    svc = ReviewService(make_config(), clock=clock)
    with db.transaction() as s:
        seed_reviewers(svc, s)
    m = BankMatcher()
    with db.transaction() as s:
        first = svc.record(s, _upload(1, COFFEE), _routing(None))
    with db.transaction() as s:
        svc.claim(s, reviewer_id="alice", item_id=first.item_id)
        svc.decide(s, item_id=first.item_id, reviewer_id="alice", verdict="benign")  # type: ignore[arg-type]
    hit = match(m, db, clock, COFFEE_COPY, "acct-1")
    assert hit is not None and hit.bank == "cleared_benign"
    assert hit.origin_item_id == first.item_id and hit.added_by == "alice"
    assert "cleared by a reviewer on 2026-11-25 (item" in hit.summary

    # a copy routed (say, above a critical hold threshold) despite the clearance is found
    # violating by a person: the clearance that covered it no longer stands
    with db.transaction() as s:
        second = svc.record(s, _upload(2, COFFEE_COPY), _routing(hit.as_reason()))
    with db.transaction() as s:
        svc.claim(s, reviewer_id="bob", item_id=second.item_id)
        svc.decide(s, item_id=second.item_id, reviewer_id="bob",  # type: ignore[arg-type]
                   verdict="violating", categories=["cat.high"])
    assert match(m, db, clock, COFFEE_COPY, "acct-1") is None
    demoted = events(db, "bank.demoted")
    # the PDQ clearance only: the exact-bytes clearance is of other bytes and stays
    assert [e.subject_id for e in demoted] == [str(hit.entry_id)]
    assert all(e.actor == "bob" for e in demoted)
    with db.transaction() as s:
        assert audit_log.verify(s).ok


def test_a_cluster_is_decided_in_one_act(db: Database, clock: FakeClock) -> None:
    """Open items in one queue whose PDQ hashes are near are one cluster: one verdict each, an
    audit event each, one bulk event; another photo, another queue and a flat image are not
    in it; a two-person item gets only this reviewer's one verdict."""
    from review import bank_cluster
    from review.schema import VerdictRow

    svc = ReviewService(make_config(), clock=clock)
    with db.transaction() as s:
        seed_reviewers(svc, s)
    flat = DihedralPdq(CHELSEA.hashes, 0)
    with db.transaction() as s:
        anchor = svc.record(s, _upload(1, COFFEE), _routing(None)).item_id
        copy = svc.record(s, _upload(2, COFFEE_COPY, "acct-2"), _routing(None)).item_id
        smaller = svc.record(s, _upload(3, pdq_of(reshared(sample("coffee"), half_size))),
                              _routing(None)).item_id
        other = svc.record(s, _upload(4, CHELSEA), _routing(None)).item_id
        low = svc.record(s, _upload(5, flat), _routing(None)).item_id
        two = svc.record(s, _upload(6, COFFEE_COPY, "acct-3"),
                         replace(_routing(None), queue="severe", severity="critical",
                                 reviewers_required=2)).item_id
    with db.transaction() as s:
        shown = bank_cluster(s, anchor)  # type: ignore[arg-type]
        assert shown["items"] == [anchor, copy, smaller] and shown["size"] == 3
    with db.transaction() as s:
        svc.claim(s, reviewer_id="alice", item_id=anchor)
        done = svc.decide_bulk(s, item_id=anchor, reviewer_id="alice",  # type: ignore[arg-type]
                               verdict="benign", group="pdq")
    assert [r.item_id for r in done] == [anchor, copy, smaller]
    assert other not in {r.item_id for r in done} and low not in {r.item_id for r in done}
    (bulk,) = events(db, "bulk.decided")
    assert bulk.data["group"] == "pdq" and bulk.data["items"] == [anchor, copy, smaller]
    with db.transaction() as s:
        verdicts = s.execute(select(VerdictRow.item_id)).scalars().all()
        assert sorted(verdicts) == [anchor, copy, smaller]
    # the severe-queue copy is another queue's cluster; decided there, it gets one verdict
    with db.transaction() as s:
        svc.claim(s, reviewer_id="sam", item_id=two)
        (res,) = svc.decide_bulk(s, item_id=two, reviewer_id="sam",  # type: ignore[arg-type]
                                 verdict="benign", group="pdq")
        assert str(res.status) == "awaiting_second"
    with db.transaction() as s:  # a flat image has no cluster
        svc.claim(s, reviewer_id="bob", item_id=low)
        assert bank_cluster(s, low)["items"] == [low]  # type: ignore[arg-type]
        try:
            svc.decide_bulk(s, item_id=low, reviewer_id="bob",  # type: ignore[arg-type]
                            verdict="benign", group="pdq")
        except NoUsablePdq as exc:
            assert exc.code == "bank.no_usable_pdq"
        else:
            raise AssertionError("a flat image made a cluster")


def test_label_studio_tasks_show_the_cluster_size(db_url: str, tmp_path: Any) -> None:
    """The task a reviewer opens says how many near-duplicates wait with it (no Label Studio
    needed: the task's data is built from the review store)."""
    from pipeline.labelstudio.sync import LabelStudioSync
    from pipeline.runtime import Runtime
    from pipeline.settings import Settings

    rt = Runtime(Settings(data_dir=tmp_path, database_url=db_url, labelstudio_token="unused"))
    try:
        rt.db.upgrade()
        with rt.db.transaction() as s:
            items = [rt.review.record(s, _upload(n, pdq), _routing(None)).item_id
                     for n, pdq in enumerate([COFFEE, COFFEE_COPY, CHELSEA], 1)]
        sync = LabelStudioSync(rt)
        with rt.db.transaction() as s:
            data = [sync.task_data(s, i)["data"] for i in items]  # type: ignore[arg-type]
        assert [d["cluster_size"] for d in data] == [2, 2, 1]
        assert "Near-duplicates open in this queue: 2 items" in data[0]["reasons_text"]
        assert "Near-duplicates" not in data[2]["reasons_text"]
    finally:
        rt.close()


def test_the_policy_decides_what_a_clearance_does() -> None:
    """`banks.cleared_match: sample` draws a share of cleared matches into the QA queue at low
    priority (deterministically per content); `allow` never does; bad values are refused."""
    from pathlib import Path

    import pytest

    from models.base import ScoreResult
    from pipeline.errors import PolicyError
    from pipeline.policy import Context, bundled_policy, policy_from_text
    from pipeline.routing import route

    demo = bundled_policy("demo")
    text = Path(demo.source).read_text()
    sampled = policy_from_text(
        text + "\nbanks: {cleared_match: sample, cleared_sample_rate: 0.5}\n")
    face = ScoreResult(model_version="m@sha256:0", scores={"person.face": 0.9})
    hit = BankHit(bank="cleared_benign", entry_id=1, kind="pdq", distance=8, source="verdict:1",
                  added_by="dana", added_at="2026-11-25T12:00:00+00:00", origin_item_id=4,
                  scope_account="acct-1")
    draws = [route(sampled, face, context=Context(), sha256=f"{n:064x}", bank_hit=hit)
             for n in range(40)]
    picked = [r for r in draws if r.qa_sample]
    assert all(r.outcome == "allow" for r in draws)
    assert 5 < len(picked) < 35 and {r.queue for r in picked} == {"qa"}
    assert all(r.priority == sampled.severity_priority["none"] for r in picked)
    assert picked[0].reasons["routing"][0] == "cleared by a reviewer on 2026-11-25 (item 4)"
    allowed = [route(demo, face, context=Context(), sha256=f"{n:064x}", bank_hit=hit)
               for n in range(40)]
    assert not any(r.qa_sample for r in allowed) and {r.outcome for r in allowed} == {"allow"}
    for bad in ("{cleared_match: sometimes}", "{clearance_scope: family}",
                "{cleared_match: sample}"):
        with pytest.raises(PolicyError):
            policy_from_text(text + f"\nbanks: {bad}\n")
