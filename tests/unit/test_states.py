"""The transition tables, pure: shape and consistency.  The same tables driven against a real
database (every allowed pair accepted, every other source refused) live in
tests/integration/test_review_store.py."""

from __future__ import annotations

import enum
import re
from typing import Any

import pytest

from review.schema import Action, ReviewItem
from review.states import (
    ACCOUNT_ACTIONS,
    ACTION_TRANSITIONS,
    AFTER_APPEAL_WINDOW,
    AUTOMATED_ACTIONS,
    CLAIMABLE,
    CLOSED_ITEM_STATUSES,
    CONTENT_ACTIONS,
    IRREVERSIBLE_ACTIONS,
    ITEM_TRANSITIONS,
    OPEN_ITEM_STATUSES,
    REVERSAL,
    REVERSAL_KINDS,
    ActionKind,
    ActionStatus,
    ItemStatus,
    Transition,
    mermaid_diagram,
    sql_in,
)

ITEM_PAIRS = [(t.name, s) for t in ITEM_TRANSITIONS.values() for s in sorted(t.sources)]
ACTION_PAIRS = [(t.name, s) for t in ACTION_TRANSITIONS.values() for s in sorted(t.sources)]


@pytest.mark.parametrize(
    ("table", "statuses"),
    [(ITEM_TRANSITIONS, ItemStatus), (ACTION_TRANSITIONS, ActionStatus)],
    ids=["item", "action"],
)
def test_transitions_only_name_known_statuses(
    table: dict[str, Transition], statuses: type[enum.StrEnum]
) -> None:
    for name, t in table.items():
        assert t.name == name
        assert t.sources, f"{name} has no source status"
        assert t.sources <= set(statuses), name
        assert t.target in set(statuses), name
        assert t.doc.strip(), f"{name} has no doc"


def test_item_statuses_split_into_open_and_closed() -> None:
    assert set(ItemStatus) == OPEN_ITEM_STATUSES | CLOSED_ITEM_STATUSES
    assert not OPEN_ITEM_STATUSES & CLOSED_ITEM_STATUSES
    assert {ItemStatus.PENDING, ItemStatus.AWAITING_SECOND} == CLAIMABLE


def test_closed_items_and_final_actions_have_no_way_out() -> None:
    for t in ITEM_TRANSITIONS.values():
        assert not t.sources & CLOSED_ITEM_STATUSES, t.name
    final = {ActionStatus.CANCELLED, ActionStatus.REVERSED}
    for t in ACTION_TRANSITIONS.values():
        assert not t.sources & final, t.name
    # executed only leaves by being reversed
    assert [t.name for t in ACTION_TRANSITIONS.values() if ActionStatus.EXECUTED in t.sources] == [
        "reverse"
    ]


def test_every_open_item_status_is_reachable_and_every_status_has_a_way_in() -> None:
    targets = {t.target for t in ITEM_TRANSITIONS.values()}
    assert set(ItemStatus) == targets  # pending via release/context_received; the rest too
    assert {t.target for t in ACTION_TRANSITIONS.values()} | {ActionStatus.PROPOSED} == set(
        ActionStatus
    )


def test_only_a_claim_leads_into_claimed_and_only_decisions_close() -> None:
    into_claimed = [t.name for t in ITEM_TRANSITIONS.values() if t.target == ItemStatus.CLAIMED]
    assert into_claimed == ["claim"]
    closing = {t.name for t in ITEM_TRANSITIONS.values() if t.target in CLOSED_ITEM_STATUSES}
    assert closing == {"decide", "escalate"}
    # a decision is only ever taken by whoever holds the lease
    for name in closing | {"await_second", "ask_context"}:
        assert ITEM_TRANSITIONS[name].sources == {ItemStatus.CLAIMED}


def test_nothing_executes_without_approval() -> None:
    assert ActionStatus.PROPOSED not in ACTION_TRANSITIONS["execute"].sources
    assert ACTION_TRANSITIONS["approve"].sources == {ActionStatus.PROPOSED}


def test_mermaid_diagram_mentions_every_transition() -> None:
    text = mermaid_diagram()
    for name, source in ITEM_PAIRS:
        target = ITEM_TRANSITIONS[name].target
        assert f"    {source} --> {target}: {name}" in text.splitlines()
    for name, source in ACTION_PAIRS:
        target = ACTION_TRANSITIONS[name].target
        assert f"    {source} --> {target}: {name}" in text.splitlines()
    # and nothing that is not in the tables
    edges = re.findall(r"^    (\w+) --> (\w+): (\w+)$", text, flags=re.M)
    assert len(edges) == len(ITEM_PAIRS) + len(ACTION_PAIRS)
    assert text.count("```mermaid") == 2


def test_action_targets_partition_the_kinds() -> None:
    assert set(ActionKind) == CONTENT_ACTIONS | ACCOUNT_ACTIONS
    assert not CONTENT_ACTIONS & ACCOUNT_ACTIONS
    for k in ActionKind:  # every kind has exactly one target
        assert (k in CONTENT_ACTIONS) != (k in ACCOUNT_ACTIONS), k


def test_irreversible_and_automated_sets() -> None:
    assert IRREVERSIBLE_ACTIONS < ACCOUNT_ACTIONS
    assert {ActionKind.TERMINATE, ActionKind.DELETE_DATA, ActionKind.REPORT} == IRREVERSIBLE_ACTIONS
    # invariant 1: the one automated outcome is a reversible content hold
    assert {ActionKind.HOLD_CONTENT} == AUTOMATED_ACTIONS
    assert AUTOMATED_ACTIONS <= CONTENT_ACTIONS
    assert ActionKind.HOLD_CONTENT in REVERSAL
    assert not AUTOMATED_ACTIONS & ACCOUNT_ACTIONS
    # invariant 2: erasure waits for the appeal window
    assert AFTER_APPEAL_WINDOW <= IRREVERSIBLE_ACTIONS
    assert ActionKind.DELETE_DATA in AFTER_APPEAL_WINDOW


def test_reversal_table() -> None:
    assert set(REVERSAL.values()) == REVERSAL_KINDS
    for kind, undo in REVERSAL.items():
        assert kind not in REVERSAL_KINDS, f"{kind} is itself a reversal"
        assert (kind in CONTENT_ACTIONS) == (undo in CONTENT_ACTIONS), kind  # same target
        assert undo not in IRREVERSIBLE_ACTIONS
        assert undo not in REVERSAL, f"{undo} would need its own reversal"
    # a reversal is never proposed against itself, and nothing reverses into an enforcement
    assert not REVERSAL_KINDS & {ActionKind.HOLD_CONTENT, ActionKind.REMOVE_CONTENT}
    # what cannot be undone must wait for the appeal window before it runs
    for kind in IRREVERSIBLE_ACTIONS - set(REVERSAL):
        assert kind in AFTER_APPEAL_WINDOW, kind
    # every enforcement except erasure has a way back
    enforcing = set(ActionKind) - REVERSAL_KINDS
    assert enforcing - set(REVERSAL) == {ActionKind.DELETE_DATA}


def test_sql_in_is_sorted_and_quoted() -> None:
    assert sql_in({"b", "a"}) == "('a', 'b')"
    assert sql_in(frozenset({"x"})) == "('x')"


def _checks(table: Any) -> dict[str, str]:
    return {
        str(c.name): str(c.sqltext)
        for c in table.constraints
        if c.__class__.__name__ == "CheckConstraint"
    }


def test_schema_checks_echo_the_tables() -> None:
    item = _checks(ReviewItem.__table__)
    assert item["ck_review_item_status"] == f"status IN {sql_in(set(ItemStatus))}"
    assert sql_in(set(CLOSED_ITEM_STATUSES)) in item["ck_review_item_resolved_iff_closed"]
    action = _checks(Action.__table__)
    assert action["ck_action_status"] == f"status IN {sql_in(set(ActionStatus))}"
    assert action["ck_action_kind"] == f"kind IN {sql_in(set(ActionKind))}"
    assert sql_in(set(IRREVERSIBLE_ACTIONS)) in action["ck_action_irreversible"]
    assert sql_in(set(AUTOMATED_ACTIONS)) in action["ck_action_human_approved"]
    assert "approver_1 <> approver_2" in action["ck_action_two_people"]
