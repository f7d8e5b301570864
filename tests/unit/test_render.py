"""What the CLI prints for people: records as tables, never a Python repr (issue 17)."""

from __future__ import annotations

from rich.console import Console

from pipeline.cli._render import how_to_appeal, render, scalar, statement_panel


def text_of(renderable: object) -> str:
    console = Console(width=100, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_records_render_without_python_reprs() -> None:
    record = {"pending": 8, "delivered": None, "ok": True,
              "last_poll": {"at": "2026-12-06T04:14:02.856331+00:00", "error": None},
              "rows": [{"id": 1, "queues": ["adult", "qa"]}, {"id": 2, "queues": []}]}
    out = text_of(render(record))
    assert "{'" not in out and "': " not in out and "None" not in out and "True" not in out
    assert "2026-12-06 04:14:02 UTC" in out and "adult, qa" in out
    assert scalar({"audience": "public", "medical_sharing": False}) == \
        "audience=public, medical_sharing=no"


def test_the_statement_of_reasons_reads_as_prose_with_both_appeal_commands() -> None:
    sor = {
        "decision_id": "d-1", "outcome": "review", "queue": "demo",
        "upload": {"id": "up-1", "account_id": "acct-1", "content_sha256": "c" * 64,
                   "received_at": "2026-12-06T04:00:00+00:00"},
        "detected": {"person.face": 0.73}, "model_version": "m", "policy_version": "p",
        "rules": [{"rule": "person.face.review", "score": 0.73, "threshold": 0.45,
                   "base_threshold": 0.5, "fired": True,
                   "moved_by": [{"modifier": "public_audience", "delta": -0.05}]}],
        "context": {"audience": "public"}, "context_effects": [],
        "reviews": [{"item_id": 1, "kind": "initial", "queue": "demo", "status": "decided",
                     "resolution": "violating",
                     "verdicts": [{"reviewer": "dana", "verdict": "violating",
                                   "categories": ["person.face"], "note": "n",
                                   "at": "2026-12-06T04:01:00+00:00"}]}],
        "actions": [], "appeals": [],
        "how_to_appeal": {"until": "2027-06-04T04:00:00+00:00", "how": "...",
                          "api": 'POST /v1/appeals {"decision_id": "d-1"}',
                          "cli": 'lookfirst review appeal d-1 --statement "..."'},
    }
    out = text_of(statement_panel(sor))
    assert "person.face.review" in out and "0.45 (base 0.5)" in out and "dana" in out
    lines = how_to_appeal(sor)
    assert any('lookfirst review appeal d-1 --statement "..."' in line for line in lines)
    assert any("POST /v1/appeals" in line for line in lines)
