"""The learning loop's rules, without I/O: labels from verdicts (the latest decided review
wins), one row per content with its provenance, near-duplicate clusters and the stable split,
the protected-segment rule, false-positive rates by segment, and the policy's promotion
section."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from models.classifier.data import Manifest
from models.errors import DatasetError
from pipeline.errors import PolicyError
from pipeline.learning.compare import check_protected, headline_text
from pipeline.learning.dataset import (
    SPLIT_ORDER,
    build_rows,
    check_shares,
    clusters,
    resolve,
    split_of,
)
from pipeline.learning.segments import all_segments, false_positive_rates, segments_of
from pipeline.policy import POLICIES_DIR, PromotionRules, bundled_policy, policy_from_text
from review import FlaggedDecided, ReviewedDecision, ReviewedItem, ReviewedVerdict

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
_ids = iter(range(1, 10_000))


def verdict(item: int, who: str, v: str, *cats: str, minutes: int = 0) -> ReviewedVerdict:
    return ReviewedVerdict(id=next(_ids), item_id=item, reviewer_id=who, verdict=v,
                           categories=cats, created_at=T0 + dt.timedelta(minutes=minutes))


def item(item_id: int, kind: str, resolution: str | None, *verdicts: ReviewedVerdict,
         minutes: int = 0, status: str = "decided") -> ReviewedItem:
    return ReviewedItem(id=item_id, kind=kind, status=status, resolution=resolution,
                        resolved_at=T0 + dt.timedelta(minutes=minutes) if resolution else None,
                        verdicts=verdicts)


def decision(did: str, content: str, *items: ReviewedItem, **context: object) -> ReviewedDecision:
    return ReviewedDecision(decision_id=did, upload_id=f"u-{did}", content_sha256=content,
                            mime="image/png", context=context, outcome="review",
                            model_version="m@sha256:0", created_at=T0, items=items)


A, B = "a" * 64, "b" * 64


# ---- labels from verdicts ---------------------------------------------------------------------
def test_an_escalation_decides_over_the_item_it_took_over() -> None:
    d = decision("d1", A,
                 item(1, "initial", None, verdict(1, "x", "violating", "c1"),
                      verdict(1, "y", "benign"), status="escalated"),
                 item(2, "escalation", "violating", verdict(2, "s", "violating", "c2", "c1"),
                      minutes=5))
    r = resolve(d)
    assert r is not None and r.resolution == "violating" and r.labels == ("c1", "c2")
    assert r.item.id == 2


def test_an_upheld_appeal_is_the_last_word_and_benign_is_a_negative() -> None:
    d = decision("d1", A,
                 item(1, "initial", "violating", verdict(1, "x", "violating", "c1")),
                 item(2, "appeal", "benign", verdict(2, "y", "benign"), minutes=60))
    r = resolve(d)
    assert r is not None and (r.resolution, r.labels) == ("benign", ())


def test_nothing_conclusive_is_no_label() -> None:
    open_item = item(1, "initial", None, verdict(1, "x", "need_more_context"), status="pending")
    assert resolve(decision("d1", A, open_item)) is None
    rows, skipped = build_rows([decision("d1", A, open_item)])
    assert rows == [] and skipped == Counter({"no conclusive verdict": 1})


def test_one_row_per_content_with_every_verdict_in_its_provenance() -> None:
    first = decision("d1", A, item(1, "initial", "violating",
                                   verdict(1, "x", "violating", "c1"), minutes=1),
                     medical_sharing=False)
    # the same image uploaded again, decided later (and differently) by two people
    again = decision("d2", A, item(2, "initial", "benign_medical",
                                   verdict(2, "y", "benign_medical"),
                                   verdict(2, "z", "benign_medical"), minutes=9),
                     medical_sharing=True)
    other = decision("d3", B, item(3, "qa", "violating", verdict(3, "x", "violating", "c2")))
    rows, skipped = build_rows([first, again, other])
    assert not skipped and [r.sha256 for r in rows] == [A, B]
    a = rows[0]
    assert (a.labels, a.resolution, dict(a.context)) == ((), "benign_medical",
                                                         {"medical_sharing": True})
    p = a.provenance
    assert p["decided_by"]["decision_id"] == "d2" and p["decided_by"]["item_id"] == 2
    assert p["decision_ids"] == ["d1", "d2"] and p["item_ids"] == [1, 2]
    assert len(p["verdict_ids"]) == 3 and len(p["decided_by"]["verdict_ids"]) == 2
    assert p["reviewers"] == 3 and p["verdicts"] == 3
    assert p["agreement"] == round(2 / 3, 4)
    assert "x" not in json.dumps(p).replace("item", "").replace("_by", "")  # no reviewer ids
    assert rows[1].labels == ("c2",) and rows[1].path == f"images/{B}.png"


# ---- clusters and the split -------------------------------------------------------------------
def test_clusters_are_connected_components_keyed_by_their_smallest_member() -> None:
    keys = ["e", "d", "c", "b", "a", "z"]
    got = clusters(keys, [("e", "d"), ("c", "d"), ("b", "a"), ("q", "z")])
    assert got == {"e": "c", "d": "c", "c": "c", "b": "a", "a": "a", "z": "z"}


def test_the_split_is_stable_and_follows_the_shares() -> None:
    shares = check_shares({"train": 0.6, "val": 0.15, "calib": 0.1, "test": 0.15})
    keys = [f"{i:064x}" for i in range(20_000)]
    got = Counter(split_of(k, shares) for k in keys)
    for name in SPLIT_ORDER:
        assert got[name] / len(keys) == pytest.approx(shares[name], abs=0.015)
    assert [split_of(k, shares) for k in keys[:50]] == [split_of(k, shares) for k in keys[:50]]
    none_in_test = check_shares({"train": 0.8, "val": 0.2})
    assert "test" not in {split_of(k, none_in_test) for k in keys[:2000]}


@pytest.mark.parametrize("shares", [{"train": 0.5, "val": 0.2}, {"train": 1.2, "val": -0.2},
                                    {"train": 0.9, "holdout": 0.1}])
def test_bad_shares_are_refused(shares: dict[str, float]) -> None:
    with pytest.raises(Exception, match="split shares"):
        check_shares(shares)


def test_an_exported_manifest_row_reads_as_a_training_row(tmp_path: Path) -> None:
    row = {"path": "images/x.png", "labels": ["c1"], "split": "train",
           "context": {"medical_sharing": True}, "id": A, "sha256": A, "cluster": A,
           "provenance": {"verdict_ids": [1]}}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    sample = Manifest.load(path).samples[0]
    assert sample.labels == frozenset({"c1"}) and sample.context == {"medical_sharing": True}
    path.write_text(json.dumps({**row, "sha256": "ABC"}) + "\n")
    with pytest.raises(DatasetError, match="'sha256' must be 64"):
        Manifest.load(path)
    path.write_text(json.dumps({**row, "provenance": [1]}) + "\n")
    with pytest.raises(DatasetError, match="'provenance' must be an object"):
        Manifest.load(path)


# ---- segments and the false-positive rate -----------------------------------------------------
def test_segments_fill_the_policy_defaults() -> None:
    assert segments_of({}) == ["all", "medical_sharing=false",
                               "recipient_verified_provider=false", "audience=private"]
    assert "medical_sharing=true" in segments_of({"medical_sharing": True, "junk": 1})
    assert len(all_segments()) == 1 + 2 + 2 + 4  # bounded: fit to be metric labels


def test_false_positive_rates_by_segment() -> None:
    rows = [
        FlaggedDecided({"medical_sharing": True, "audience": "public"}, "medical", 4, 3),
        FlaggedDecided({"medical_sharing": False, "audience": None}, "adult", 6, 1),
    ]
    rates = {r.segment: r for r in false_positive_rates(rows)}
    assert list(rates) == all_segments()
    assert (rates["all"].decided, rates["all"].benign) == (10, 4)
    assert rates["medical_sharing=true"].rate == 0.75
    assert rates["audience=private"].decided == 6 and rates["audience=public"].decided == 4
    assert rates["audience=direct"].rate is None  # nothing decided: no rate, not zero


# ---- the protected-segment rule ---------------------------------------------------------------
def seg(benign: int, active: int, candidate: int) -> dict[str, object]:
    return {"benign": benign, "benign_flagged": {"active": active, "candidate": candidate}}


def test_a_candidate_worse_on_a_protected_segment_is_refused() -> None:
    rules = PromotionRules(protected_segments=(("medical_sharing", True),), fpr_tolerance=0.02)
    traffic = {"segments": {"medical_sharing=true": seg(40, 2, 6), "all": seg(100, 2, 6)}}
    evaluation = {"segments": {"medical_sharing=true": seg(10, 0, 1)}}
    check = check_protected(rules, traffic, evaluation)
    s = check.segments[0]
    assert (s.benign, s.benign_flagged) == (50, {"active": 2, "candidate": 7})
    assert s.worse and not check.passed
    assert "would flag 7 of 50 benign (14.0%)" in check.problems()[0]
    assert check.as_dict()["segments"][0]["evidence"]["evaluation"]["benign"] == 10


def test_within_the_tolerance_or_better_passes() -> None:
    rules = PromotionRules(fpr_tolerance=0.05)
    assert check_protected(rules, {"segments": {"medical_sharing=true": seg(40, 2, 4)}},
                           None).passed  # 5% -> 10%: within 5 points
    assert check_protected(rules, {"segments": {"medical_sharing=true": seg(40, 9, 0)}},
                           None).passed
    strict = PromotionRules(fpr_tolerance=0.0)
    assert not check_protected(strict, {"segments": {"medical_sharing=true": seg(40, 2, 3)}},
                               None).passed


def test_no_benign_upload_in_a_protected_segment_is_no_evidence() -> None:
    check = check_protected(PromotionRules(), {"segments": {"all": seg(10, 0, 0)}}, None)
    assert not check.passed and "no benign upload" in check.problems()[0]


def test_headline_text_reads_both_sides() -> None:
    h = {"active": "m@1", "candidate": "m@2", "decisions": 200, "changed": 30,
         "people_decided": 200, "wrong": {"active": 50, "candidate": 8},
         "benign_flagged": {"active": 40, "candidate": 5},
         "violating_allowed": {"active": 10, "candidate": 3},
         "protected": {"medical_sharing=true": {"fpr": {"active": 0.5, "candidate": 0.05},
                                                "benign": 40}},
         "evaluation_macro_roc_auc": {"active": 0.9, "candidate": 0.99}, "promotable": True}
    text = headline_text(h)
    assert text.startswith("m@2 against m@1: 30 of 200 recent outcomes change")
    assert "wrong outcomes 50 → 8" in text and "50.0% → 5.0%" in text
    assert "0.900 → 0.990" in text and text.endswith("promotable")


# ---- the policy's promotion section -----------------------------------------------------------
def test_promotion_rules_default_and_configured() -> None:
    assert bundled_policy().promotion.segment_names == ("medical_sharing=true",)
    raw = yaml.safe_load((POLICIES_DIR / "default.yaml").read_text())
    raw.pop("promotion")
    assert policy_from_text(yaml.safe_dump(raw)).promotion == PromotionRules()
    raw["promotion"] = {"protected_segments": [{"audience": "public"},
                                               {"recipient_verified_provider": True}],
                        "fpr_tolerance": 0}
    rules = policy_from_text(yaml.safe_dump(raw)).promotion
    assert rules.segment_names == ("audience=public", "recipient_verified_provider=true")
    assert rules.fpr_tolerance == 0.0


@pytest.mark.parametrize(("promotion", "message"), [
    ({"protected_segments": [{"nope": True}]}, "unknown context field"),
    ({"protected_segments": [{"audience": "everyone"}]}, "not a value this context field"),
    ({"protected_segments": [{"medical_sharing": True, "audience": "public"}]}, "exactly one"),
    ({"protected_segments": {"medical_sharing": True}}, "must be a list"),
    ({"fpr_tolerance": 1.5}, "between 0 and 1"),
    ({"tolerance": 0.1}, "unknown key"),
])
def test_a_bad_promotion_section_names_its_line(promotion: dict[str, object],
                                                message: str) -> None:
    raw = yaml.safe_load((POLICIES_DIR / "default.yaml").read_text())
    raw["promotion"] = promotion
    with pytest.raises(PolicyError, match=message) as caught:
        policy_from_text(yaml.safe_dump(raw), source="p.yaml")
    assert "p.yaml line " in caught.value.detail and "promotion" in caught.value.detail
