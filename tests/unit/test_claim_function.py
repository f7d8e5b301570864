"""PostgreSQL's claim function comes from one source: rendering its template from today's
review/states.py and review/audit.py gives exactly the SQL of the newest migration that made
it, and the audit body's pieces it hashes are audit.py's own canonical JSON.  No database."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from review import audit
from review.claims.function import (
    SIGNATURE,
    TEMPLATE,
    ClaimOutcome,
    render_claim_function,
    template_values,
)
from review.claims.rules import claim_event, claim_event_segments
from review.states import CLAIMABLE, ITEM_TRANSITIONS, sql_in

VERSIONS = Path(__file__).resolve().parents[2] / "review" / "migrations" / "versions"
AT = dt.datetime(2026, 12, 9, 10, 30, 15, 123456, tzinfo=dt.UTC)


def migrations_defining_the_function() -> list[ModuleType]:
    out = []
    for path in sorted(VERSIONS.glob("*.py")):
        if "lookfirst_claim" not in path.read_text():
            continue
        spec = importlib.util.spec_from_file_location(f"migration_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "FUNCTION"):
            out.append(module)
    return sorted(out, key=lambda m: m.revision)


def test_the_newest_claim_function_migration_holds_what_the_template_renders_today() -> None:
    newest = migrations_defining_the_function()[-1]
    rendered = render_claim_function()
    assert rendered == newest.FUNCTION, (
        f"lookfirst_claim's SQL no longer matches migration {newest.revision}: the template or "
        "the names it is rendered from (review/states.py, review/claims/rules.py, "
        "review/audit.py) changed.  Migrations are frozen: write a new migration that drops "
        f"{newest.SIGNATURE} and runs `render_claim_function()`'s text (see migration 0009)."
    )
    assert newest.SIGNATURE == SIGNATURE


def test_the_rendered_function_uses_the_names_of_the_state_table() -> None:
    sql = render_claim_function()
    assert "{{" not in sql and "}}" not in sql
    claim = ITEM_TRANSITIONS["claim"]
    # the claimable statuses, written as the partial index's predicate writes them
    assert sql.count(f"i.status IN {sql_in(set(CLAIMABLE))}") == 4
    assert f"SET status = '{claim.target}'" in sql
    assert "VALUES (v_chain, v_seq, p_now, p_reviewer, 'item.claim', 'review_item'" in sql
    assert "'{\"to\":\"claimed\"}'::json" in sql
    for code in ClaimOutcome:
        assert f"'{code}'" in sql
    # nothing typed into the template by hand that the table names
    names = set(claim.sources) | {claim.target, "appeal", "escalation", *ClaimOutcome}
    assert not [n for n in names if f"'{n}'" in TEMPLATE]
    assert "status = {{proposed}}" in TEMPLATE  # ('proposed' is also a key of the view's JSON)
    assert set(template_values()) == set(re.findall(r"\{\{(\w+)\}\}", TEMPLATE))


@pytest.mark.parametrize("actor", [
    "alice",
    'o\'neil "\\x"',
    "zoë",
    "ünï\tcode 🙂",
    "line\nbreak\u2028sep",
    # the stand-ins themselves, in the actor: the pieces still split at the real places
    "7340281906155023441 lookfirst-subject-id-mark",
])
@pytest.mark.parametrize(("seq", "item_id"), [(1, 1), (42, 7340281906155023441), (10**9, 12)])
def test_the_body_pieces_rebuild_audit_s_own_hash(actor: str, seq: int, item_id: int) -> None:
    """What the function computes (prev || seg1 || seq || seg2 || item || seg3, sha256) is the
    hash audit.py gives the same event, for any reviewer id."""
    first, middle, last = claim_event_segments(AT, actor)
    assert all(piece.isascii() for piece in (first, middle, last))
    prev = "ab" * 32
    in_server = hashlib.sha256(
        (prev + first + str(seq) + middle + str(item_id) + last).encode("utf-8")).hexdigest()
    e = claim_event(AT, actor, item_id)
    assert in_server == audit.event_hash(
        prev_hash=prev, seq=seq, at=e.at, actor=e.actor, event=e.event,
        subject_type=e.subject_type, subject_id=str(e.subject_id), data=e.data)
