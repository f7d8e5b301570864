"""The source of PostgreSQL's claim function, `lookfirst_claim`: a template whose status names,
item kinds, refusal codes and audit event are rendered from `review.states` and
`review.claims.rules`, so the SQL cannot drift from the Python path.

Migrations are frozen history: a migration holds the rendered SQL as text, and a unit test
requires that rendering this template today gives exactly the newest migration's SQL.  Change
a status name here or in `review.states` and that test fails until a new migration replaces
the function (`render_claim_function()` gives its text).

The audit event's canonical JSON is not rebuilt in SQL: `review.audit.body_segments` renders
it in Python around the two values only the server knows (the chain's next sequence number
and the item id), and the function concatenates the pieces and hashes them."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from review import audit
from review.claims.rules import (
    CLAIM,
    CLAIM_EVENT,
    CLAIM_SUBJECT,
    MAX_CLAIM_BATCH,
    claim_event_data,
)
from review.states import ActionStatus, ItemKind


class ClaimOutcome(enum.StrEnum):
    """The function's answer in its `outcome_code` column."""

    OK = "ok"  # the rows are the leased items, in claim order (none: nothing to claim)
    UNKNOWN_REVIEWER = "unknown_reviewer"  # not registered, or not active
    NOT_ENTITLED = "not_entitled"  # the named queue is not the reviewer's
    NO_QUEUES = "no_queues"  # the reviewer may take no queue at all
    EXPOSURE_CAP = "exposure_cap"  # every queue left is capped and spent (queue: the first)


NAME = "lookfirst_claim"
#: the argument types, as PostgreSQL names them (DROP FUNCTION needs them)
SIGNATURE = (f"{NAME}(text, text, integer, integer, timestamp without time zone, "
             "timestamp without time zone, integer, text[], text[], integer[], "
             "timestamp without time zone[], text[])")

TEMPLATE = r"""
CREATE OR REPLACE FUNCTION lookfirst_claim(
    p_reviewer text,        -- who claims
    p_queue text,           -- one queue, or NULL: any queue the reviewer may take
    p_item_id integer,      -- one item, or NULL: the most urgent
    p_limit integer,        -- at most this many items (1..{{max_batch}}, checked by the caller)
    p_now timestamp,        -- the service's clock, UTC
    p_until timestamp,      -- the lease's end
    p_chain integer,        -- the audit chain this transaction already holds, or NULL
    p_cfg_queues text[],    -- the configured queues,
    p_cfg_roles text[],     --   the role each needs (NULL: none),
    p_cfg_caps integer[],   --   its exposure cap per reviewer (NULL: none)
    p_cfg_since timestamp[],--   and where its exposure window starts
    p_audit text[]          -- the claim event's canonical body, rendered by review/audit.py,
                            -- in three pieces around its seq and its item id
) RETURNS TABLE (
    ord integer,        -- 1.. in claim order; 0 on the one row of a refusal
    outcome_code text,  -- {{ok}}, or the refusal: {{unknown_reviewer}}, {{not_entitled}},
                        -- {{no_queues}}, {{exposure_cap}}
    chain integer,      -- the audit chain the events went to
    queue text,         -- the item's queue (for {{exposure_cap}}: the capped queue)
    item json           -- what the reviewer's view is built from (one document: a row of
                        -- two dozen columns cost the client more than the claim itself)
)
LANGUAGE plpgsql
-- PL/pgSQL would re-plan each statement on every call (custom plans win on estimated cost);
-- planning was half of the server's CPU per claim (pgbench, 16 clients: 860 -> 1,500 claims/s
-- with generic plans, which use the same indexes).  A generic plan is made once per connection
-- and made again when ANALYZE (autovacuum) changes a table's statistics
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_active boolean;
    v_roles jsonb;
    v_entitled text[];
    v_queues text[];
    v_open text[] := '{}';
    v_capped text[] := '{}';
    v_room integer[] := '{}';
    v_order text[];
    v_q text;
    v_i integer;
    v_n integer;
    v_cap integer;
    v_seen integer;
    v_ids integer[];
    v_all integer[] := '{}';
    v_chain integer;
    v_seq bigint;
    v_prev text;
    v_hash text;
    v_chains integer;
    v_id integer;
BEGIN
    IF cardinality(p_audit) IS DISTINCT FROM 3 THEN
        RAISE EXCEPTION 'lookfirst_claim: p_audit must hold the 3 pieces of the event body';
    END IF;
    -- who may claim: an active reviewer, in the queue, with the role it needs
    SELECT r.active, r.roles::jsonb INTO v_active, v_roles FROM reviewer r WHERE r.id = p_reviewer;
    IF NOT FOUND OR NOT v_active THEN
        RETURN QUERY
            SELECT 0, {{unknown_reviewer}}::text, NULL::integer, NULL::text, NULL::json;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(m.queue::text ORDER BY m.queue COLLATE "C"), '{}') INTO v_entitled
      FROM reviewer_queue m
      JOIN unnest(p_cfg_queues, p_cfg_roles) AS c(q, role) ON c.q = m.queue
     WHERE m.reviewer_id = p_reviewer AND (c.role IS NULL OR v_roles ? c.role);
    IF p_queue IS NOT NULL THEN
        IF NOT (p_queue = ANY (v_entitled)) THEN
            RETURN QUERY
            SELECT 0, {{not_entitled}}::text, NULL::integer, NULL::text, NULL::json;
            RETURN;
        END IF;
        v_queues := ARRAY[p_queue];
    ELSE
        v_queues := v_entitled;
    END IF;
    IF cardinality(v_queues) = 0 THEN
        RETURN QUERY
            SELECT 0, {{no_queues}}::text, NULL::integer, NULL::text, NULL::json;
        RETURN;
    END IF;

    -- exposure left in each capped queue this shift
    FOREACH v_q IN ARRAY v_queues LOOP
        v_i := array_position(p_cfg_queues, v_q);
        v_cap := p_cfg_caps[v_i];
        IF v_cap IS NULL THEN
            v_open := v_open || v_q;
            CONTINUE;
        END IF;
        SELECT count(*) INTO v_seen FROM exposure x
         WHERE x.reviewer_id = p_reviewer AND x.queue = v_q AND x.at > p_cfg_since[v_i];
        v_capped := v_capped || v_q;
        v_room := v_room || (v_cap - v_seen);
        IF v_cap - v_seen > 0 THEN
            v_open := v_open || v_q;
        END IF;
    END LOOP;
    IF cardinality(v_open) = 0 THEN
        RETURN QUERY
            SELECT 0, {{exposure_cap}}::text, NULL::integer, v_queues[1]::text, NULL::json;
        RETURN;
    END IF;

    -- the most urgent queue first: the one whose first claimable item is due first
    IF p_item_id IS NULL AND cardinality(v_open) > 1 THEN
        SELECT coalesce(array_agg(h.q ORDER BY h.head, h.q COLLATE "C"), '{}') INTO v_order
          FROM (SELECT o.q, (SELECT min(i.rank_at) FROM review_item i
                              WHERE i.queue = o.q
                                AND i.status IN {{claimable}}) AS head
                  FROM unnest(v_open) AS o(q)) h
         WHERE h.head IS NOT NULL;
    ELSE
        v_order := v_open;
    END IF;

    -- lock and lease, queue by queue, in claim order; never past a queue's exposure left
    FOREACH v_q IN ARRAY v_order LOOP
        v_n := p_limit - cardinality(v_all);
        EXIT WHEN v_n <= 0;
        v_i := array_position(v_capped, v_q);
        IF v_i IS NOT NULL THEN
            v_n := least(v_n, v_room[v_i]);
            CONTINUE WHEN v_n <= 0;
        END IF;
        IF p_item_id IS NULL THEN
            SELECT array_agg(p.id ORDER BY p.rank_at, p.id) INTO v_ids FROM (
                SELECT i.id, i.rank_at FROM review_item i
                 WHERE i.queue = v_q
                   AND i.status IN {{claimable}}
                   -- a second verdict must come from another person
                   AND NOT EXISTS (SELECT 1 FROM verdict v
                                    WHERE v.item_id = i.id AND v.reviewer_id = p_reviewer)
                   -- appeals and escalations go to someone who did not decide this before
                   AND (i.kind NOT IN {{fresh_eyes_kinds}} OR NOT EXISTS (
                        SELECT 1 FROM verdict pv JOIN review_item pi ON pi.id = pv.item_id
                         WHERE pi.decision_id = i.decision_id AND pv.reviewer_id = p_reviewer))
                 ORDER BY i.rank_at, i.id
                 LIMIT v_n
                 FOR UPDATE OF i SKIP LOCKED) p;
        ELSE
            SELECT array_agg(p.id) INTO v_ids FROM (
                SELECT i.id FROM review_item i
                 WHERE i.id = p_item_id AND i.queue = v_q
                   AND i.status IN {{claimable}}
                   AND NOT EXISTS (SELECT 1 FROM verdict v
                                    WHERE v.item_id = i.id AND v.reviewer_id = p_reviewer)
                   AND (i.kind NOT IN {{fresh_eyes_kinds}} OR NOT EXISTS (
                        SELECT 1 FROM verdict pv JOIN review_item pi ON pi.id = pv.item_id
                         WHERE pi.decision_id = i.decision_id AND pv.reviewer_id = p_reviewer))
                 FOR UPDATE OF i SKIP LOCKED) p;
        END IF;
        IF v_ids IS NOT NULL THEN
            v_all := v_all || v_ids;
            IF v_i IS NOT NULL THEN
                v_room[v_i] := v_room[v_i] - cardinality(v_ids);
            END IF;
        END IF;
    END LOOP;
    IF cardinality(v_all) = 0 THEN
        RETURN;  -- nothing to claim (the caller sweeps expired leases and may ask again)
    END IF;

    UPDATE review_item i SET status = {{claimed}}, claimed_by = p_reviewer,
           lease_expires_at = p_until, updated_at = p_now
     WHERE i.id = ANY (v_all) AND i.status IN {{claimable}};
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n <> cardinality(v_all) THEN  -- the rows are locked by us: cannot happen
        RAISE EXCEPTION 'lookfirst_claim: % of % locked items changed state', v_n,
            cardinality(v_all);
    END IF;
    IF cardinality(v_capped) > 0 THEN
        INSERT INTO exposure (reviewer_id, queue, item_id, at)
        SELECT p_reviewer, i.queue, i.id, p_now
          FROM unnest(v_all) WITH ORDINALITY AS t(item, n) JOIN review_item i ON i.id = t.item
         WHERE i.queue = ANY (v_capped)
         ORDER BY t.n;
    END IF;

    -- one audit event per item, on the chain this transaction holds or a free one
    IF p_chain IS NOT NULL THEN
        SELECT h.id, h.seq, h.hash INTO v_chain, v_seq, v_prev
          FROM audit_head h WHERE h.id = p_chain FOR UPDATE;
    ELSE
        SELECT h.id, h.seq, h.hash INTO v_chain, v_seq, v_prev
          FROM audit_head h ORDER BY h.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN  -- more audited transactions in flight than chains: queue on one
            SELECT count(*) INTO v_chains FROM audit_head;
            SELECT h.id, h.seq, h.hash INTO v_chain, v_seq, v_prev
              FROM audit_head h WHERE h.id = 1 + pg_backend_pid() % v_chains FOR UPDATE;
        END IF;
    END IF;
    -- the body is review/audit.py's, rendered there around the two values known only here
    FOREACH v_id IN ARRAY v_all LOOP
        v_seq := v_seq + 1;
        v_hash := encode(sha256(convert_to(
            v_prev || p_audit[1] || v_seq::text || p_audit[2] || v_id::text || p_audit[3],
            'UTF8')), 'hex');
        INSERT INTO audit_event (chain, seq, at, actor, event, subject_type, subject_id, data,
                                 prev_hash, hash)
        VALUES (v_chain, v_seq, p_now, p_reviewer, {{event}}, {{subject_type}}, v_id::text,
                {{event_data}}::json, v_prev, v_hash);
        v_prev := v_hash;
    END LOOP;
    UPDATE audit_head h SET seq = v_seq, hash = v_prev WHERE h.id = v_chain;

    -- what the reviewer's view is built from (the view and its no-anchoring rule: Python)
    RETURN QUERY
    SELECT t.n::integer, {{ok}}::text, v_chain, i.queue::text, json_build_object(
           'id', i.id, 'decision_id', i.decision_id, 'kind', i.kind, 'queue', i.queue,
           'severity', i.severity, 'priority', i.priority, 'status', i.status,
           'reviewers_required', i.reviewers_required, 'account_id', i.account_id,
           'content_sha256', i.content_sha256, 'parent_item_id', i.parent_item_id,
           'claimed_by', i.claimed_by, 'lease_expires_at', i.lease_expires_at,
           'due_at', i.due_at, 'created_at', i.created_at,
           'outcome', d.outcome, 'scores', d.scores, 'reasons', d.reasons,
           'context', u.context,
           'verdicts', (SELECT json_agg(json_build_object(
                       'item_id', v.item_id, 'reviewer_id', v.reviewer_id,
                       'verdict', v.verdict, 'categories', v.categories, 'note', v.note,
                       'created_at', v.created_at) ORDER BY v.id)
              FROM verdict v
             WHERE v.item_id = i.id
                OR (i.kind = {{escalation}} AND v.item_id = i.parent_item_id)),
           'proposed', (SELECT json_agg(a.kind ORDER BY a.id) FROM action a
             WHERE a.decision_id = i.decision_id AND a.status = {{proposed}}),
           'appeal_statement', (SELECT ap.statement FROM appeal ap WHERE ap.item_id = i.id))
      FROM unnest(v_all) WITH ORDINALITY AS t(item, n)
      JOIN review_item i ON i.id = t.item
      JOIN decision d ON d.id = i.decision_id
      JOIN upload u ON u.id = d.upload_id
     ORDER BY t.n;
END
$fn$;
"""


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in_list(values: Iterable[str]) -> str:
    # sorted, as review.states.sql_in writes the partial index's predicate: the planner
    # matches the claim's `status IN (...)` to ix_review_item_claimable by this very list
    return "(" + ", ".join(_literal(v) for v in sorted(values)) + ")"


def template_values() -> dict[str, str]:
    """Each placeholder of the template and the SQL it stands for, from today's Python."""
    return {
        "max_batch": str(MAX_CLAIM_BATCH),
        "claimable": _in_list(CLAIM.sources),
        "claimed": _literal(CLAIM.target),
        "fresh_eyes_kinds": _in_list([ItemKind.APPEAL, ItemKind.ESCALATION]),
        "escalation": _literal(ItemKind.ESCALATION),
        "proposed": _literal(ActionStatus.PROPOSED),
        "event": _literal(CLAIM_EVENT),
        "subject_type": _literal(CLAIM_SUBJECT),
        "event_data": _literal(audit.canonical(claim_event_data())),
        **{code.name.lower(): _literal(code) for code in ClaimOutcome},
    }


def render_claim_function() -> str:
    """The `CREATE OR REPLACE FUNCTION lookfirst_claim ...` statement for today's states."""
    values = template_values()
    used: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        used.add(m.group(1))
        return values[m.group(1)]  # an unknown placeholder is a KeyError: a template bug

    sql = re.sub(r"\{\{(\w+)\}\}", fill, TEMPLATE)
    unused = set(values) - used
    assert not unused, f"template values never used: {sorted(unused)}"
    return sql
