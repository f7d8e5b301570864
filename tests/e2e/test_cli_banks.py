"""PDQ banks through the real CLI (subprocesses, the real model, SQLite): an HMA export is
imported (a withdrawn row and a known false positive skipped); a recompressed copy of a listed
photo is sent to the two-person severe queue with the entry and distance in its reasons; a
reviewer marks the match false, which demotes the entry (audited) so the next copy is not
matched; export, remove; the audit chain verifies.  Sample photos, edited by the test."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.hashing.pdq import pdq_hash
from tests.e2e.test_cli_flow import ROOT, env, js, run  # noqa: F401  (env is a fixture)
from tests.photos import half_size, reshared, sample


def test_pdq_list_import_match_deconfirm_export_remove(env: dict[str, str],  # noqa: F811
                                                       tmp_path: Path) -> None:
    env = {**env, "LOOKFIRST_POLICY_PATH": str(ROOT / "pipeline/policies/default.yaml")}
    coffee = pdq_hash(sample("coffee")).hex
    rocket = pdq_hash(sample("rocket")).hex
    hma = tmp_path / "export.jsonl"
    hma.write_text("\n".join(json.dumps(r) for r in [
        {"signal_type": "pdq", "signal": coffee, "note": "test list entry"},
        {"signal_type": "pdq", "signal": rocket, "should_delete": True},
        {"signal_type": "pdq", "signal": "f" * 64, "category": "non_malicious"},
        {"signal_type": "md5", "signal": "0" * 32},
    ]) + "\n")
    imported = js(run(env, "banks", "import", str(hma), "--format", "hma", "--source", "hma",
                      "--json"))
    assert imported["added"] == 1
    assert imported["skipped"] == {"withdrawn": 1, "marked_false_positive": 1,
                                   "unsupported_type": 1}
    (entry,) = js(run(env, "banks", "list", "--kind", "pdq", "--json"))
    assert entry["value"] == coffee and entry["added_by"].startswith("os:")  # the operator

    copy = tmp_path / "coffee-copy.jpg"
    copy.write_bytes(reshared(sample("coffee"), half_size, quality=30))
    hit = js(run(env, "score", str(copy), "--account", "a1", "--json"))
    assert hit["outcome"] in ("review", "hold") and hit["queue"] == "severe"
    bank = hit["reasons"]["bank"]
    assert bank["entry_id"] == entry["id"] and bank["kind"] == "pdq"
    assert 0 < bank["distance"] <= 31
    assert hit["reasons"]["routing"][0].startswith(f"matches violating bank entry {entry['id']}")

    judged = js(run(env, "banks", "deconfirm", hit["decision_id"], "--reviewer", "sam",
                    "--note", "a coffee cup", "--json"))
    assert [e["state"] for e in judged["entries"]] == ["demoted"]
    second = tmp_path / "coffee-copy2.jpg"
    second.write_bytes(reshared(sample("coffee"), half_size, quality=40))
    again = js(run(env, "score", str(second), "--account", "a1", "--json"))
    assert again["reasons"]["bank_match"] is None and again["outcome"] == "allow"

    run(env, "banks", "reinstate", str(entry["id"]), "--reason", "checked", "--json")
    out = tmp_path / "out.txt"
    exported = js(run(env, "banks", "export", str(out), "--format", "pdq", "--json"))
    assert exported["written"] == 1 and out.read_text().startswith(coffee)
    removed = js(run(env, "banks", "remove", str(entry["id"]), "--reason", "source withdrew",
                     "--json"))
    assert removed["state"] == "removed"
    assert js(run(env, "banks", "list", "--state", "active", "--kind", "pdq", "--json")) == []
    missing = run(env, "banks", "remove", "999", "--reason", "x", expect=2)
    assert "bank.not_found" in missing.stderr
    proc = run(env, "audit", "verify")
    assert "verifies" in proc.stdout


def test_the_motivating_case_through_the_cli(env: dict[str, str],  # noqa: F811
                                             tmp_path: Path) -> None:
    """Shared for a doctor → medical queue → benign_medical → the same photo re-sent at half
    size and quality 30 by the same account is allowed, the clearance in its statement."""
    run(env, "reviewers", "add", "eli", "--queue", "medical", "--role", "medical")
    astronaut = str(ROOT / "samples/astronaut.jpg")
    first = js(run(env, "score", astronaut, "--account", "family", "--context",
                   "medical_sharing=true", "--json"))
    assert first["outcome"] == "review" and first["queue"] == "medical"
    run(env, "review", "claim", "--reviewer", "eli")
    run(env, "review", "decide", str(first["review_item_id"]), "--reviewer", "eli",
        "--verdict", "benign_medical")
    copy = tmp_path / "resent.jpg"
    copy.write_bytes(reshared(sample("astronaut"), half_size, quality=30))
    again = js(run(env, "score", str(copy), "--account", "family", "--context",
                   "medical_sharing=true", "--json"))
    assert again["outcome"] == "allow" and again["review_item_id"] is None
    assert again["reasons"]["bank"]["origin_item_id"] == first["review_item_id"]
    shown = js(run(env, "decisions", "show", again["decision_id"], "--json"))
    assert shown["context_effects"][0].startswith("cleared by a reviewer on ")
    assert shown["context_effects"][0].endswith(f"(item {first['review_item_id']})")
    assert "verifies" in run(env, "audit", "verify").stdout


def test_backfill_hashes_content_stored_before_pdq(env: dict[str, str],  # noqa: F811
                                                    tmp_path: Path) -> None:
    """Content recorded without a PDQ hash (as before migration 0012) is hashed from its blob
    by `banks backfill`; a blob that is gone is counted, not fatal."""
    import hashlib

    from pipeline.blobs import LocalBlobStore
    from pipeline.hashing.pdq import pdq_hash
    from review import Database, NewUpload, ReviewService, content_without_pdq
    from tests.review_support import make_config, routing

    data_dir = Path(env["LOOKFIRST_DATA_DIR"])
    db = Database(f"sqlite:///{(data_dir / 'lookfirst.db').resolve()}")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        db.upgrade()
        blobs = LocalBlobStore(data_dir / "blobs")
        svc = ReviewService(make_config())
        coffee = (ROOT / "samples/coffee.jpg").read_bytes()
        gone = b"never stored"
        with db.transaction() as s:
            for n, data in enumerate((coffee, gone)):
                sha = hashlib.sha256(data).hexdigest()
                svc.record(s, NewUpload(account_id="a", external_id=f"old-{n}", source="t",
                                        context={}, sha256=sha, mime="image/jpeg", width=1,
                                        height=1, size_bytes=len(data)), routing("allow", None))
        blobs.put(coffee)
        out = js(run(env, "banks", "backfill", "--json"))
        assert out == {"hashed": 1, "blob_missing_or_corrupt": 1, "undecodable": 0}
        with db.transaction() as s:
            assert content_without_pdq(s) == [hashlib.sha256(gone).hexdigest()]
            from review.schema import Content

            stored = s.get(Content, hashlib.sha256(coffee).hexdigest())
            assert stored is not None and stored.pdq == pdq_hash(sample("coffee")).hex
    finally:
        db.dispose()
