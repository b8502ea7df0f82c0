"""lean reservations: budget ids on the reservation row, a leaner wflo_reserve

The budgets a reservation holds money against move from the ``reservation_budgets`` link
table into ``reservations.budget_ids`` (bigint[], ascending): a reservation is one row,
and no foreign-key check touches a hot budget row while its lock is held. ``wflo_reserve``
is rewritten to do less while it holds a budget lock: a budget without a period (most of
them) is reserved by a plain conditional UPDATE, the period roll-over runs only on day /
month budgets, and the NOTIFY payload is built from the updated row. ``wflo_thresholds``
becomes a plain expression (it was an aggregate over a subquery). Whether leases have
expired is probed when the caller asks (``p_probe``: the ledger asks once a second, and a
refusal always looks). ``wflo_finish`` reads the ids from the reservation. The outbox's
unique index on ``event_id`` goes: ids are random UUIDs, nothing looks events up by id,
and the index cost every money move a random B-tree insert. Measured with bench/ledger.py
(see BENCHMARKS.md).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from wflo_jupyter.ledger.migration_texts import migration_module, or_replace

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _function_0002(name: str) -> str:
    """Migration 0002's text of function ``name``: what a downgrade restores."""
    functions = migration_module("0002_budgets_reservations_calls.py")._FUNCTIONS
    (text,) = [f for f in functions if f"FUNCTION {name}(" in f]
    return or_replace(str(text))


_LINK_LOOKUP = """SELECT rb.budget_id FROM reservation_budgets AS rb
                       WHERE rb.reservation_id = p_rid"""
_ARRAY_LOOKUP = """SELECT unnest(r.budget_ids) FROM reservations AS r
                       WHERE r.id = p_rid"""


def _finish_0003() -> str:
    old = _function_0002("wflo_finish")
    assert _LINK_LOOKUP in old, "wflo_finish of 0002 changed: update migration 0003"
    return old.replace(_LINK_LOOKUP, _ARRAY_LOOKUP)


_RESERVE_0002_ARGS = "text[], text[], bigint, text, double precision, text, text, text, text"

_THRESHOLDS = """
CREATE OR REPLACE FUNCTION wflo_thresholds(p_mask integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_jsonb(array_remove(ARRAY[CASE WHEN p_mask & 1 = 1 THEN 50 END,
                                       CASE WHEN p_mask & 2 = 2 THEN 75 END,
                                       CASE WHEN p_mask & 4 = 4 THEN 90 END,
                                       CASE WHEN p_mask & 8 = 8 THEN 100 END], NULL))
$$;
"""

# The protocol and its proof are in ledger/reservations.py. What needs no budget lock comes
# first (the expiry probe, the reservation row with its budget ids, the event); then one
# conditional UPDATE per budget, ascending id (the global lock order); then the NOTIFY.
_RESERVE = """
CREATE FUNCTION wflo_reserve(
    p_kinds text[], p_keys text[], p_amount bigint, p_rid text, p_lease_s double precision,
    p_step_id text, p_call_id text, p_label text, p_topic text, p_probe boolean)
RETURNS TABLE (payload json, lease_expires_at timestamptz, has_expired boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_lease timestamptz := now() + make_interval(secs => p_lease_s);
    v_ids bigint[];
    v_periods text[];
    v_i integer := 0;
    v_id bigint;
    v_b budgets;
    v_payload json;
    v_payloads json[] := '{}';
    v_done bigint[] := '{}';
    v_refused bigint;
    v_has_expired boolean;
BEGIN
    -- are there leases to expire? (asked when the caller wants to know; a refusal always)
    v_has_expired := p_probe AND EXISTS (SELECT 1 FROM reservations AS x
                                         WHERE x.state = 'held' AND x.lease_expires_at < v_now);
    IF cardinality(p_kinds) = 1 THEN
        SELECT ARRAY[b.id], ARRAY[b.period::text] INTO v_ids, v_periods
        FROM budgets AS b WHERE b.scope_kind = p_kinds[1] AND b.scope_key = p_keys[1];
    ELSE
        SELECT array_agg(b.id ORDER BY b.id), array_agg(b.period::text ORDER BY b.id)
        INTO v_ids, v_periods FROM budgets AS b
        WHERE (b.scope_kind, b.scope_key) IN (SELECT * FROM unnest(p_kinds, p_keys));
    END IF;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_kinds) THEN
        INSERT INTO reservations (id, amount_micros, state, lease_expires_at, step_id, call_id,
                                  label, budget_ids)
        VALUES (p_rid, p_amount, 'held', v_lease, p_step_id, p_call_id, p_label, v_ids);
        -- its event, one per budget: what was reserved (the totals travel in the NOTIFY
        -- below and in the settle events)
        INSERT INTO outbox (event_id, event_type, topic, key, envelope)
        SELECT e.id, 'budget.updated', p_topic, e.key,
               jsonb_build_object('id', e.id, 'type', 'budget.updated', 'key', e.key,
                                  'occurred_at', v_now,
                                  'payload', jsonb_build_object(
                                      'kind', e.kind, 'key', e.skey, 'op', 'reserve',
                                      'reservation', p_rid, 'amount_micros', p_amount,
                                      'step_id', p_step_id, 'label', p_label))
        FROM (SELECT gen_random_uuid()::text AS id, q.kind || ':' || q.key AS key,
                     q.kind, q.key AS skey
              FROM unnest(p_kinds, p_keys) WITH ORDINALITY AS q(kind, key, ord)
              ORDER BY q.ord) AS e;
        FOREACH v_id IN ARRAY v_ids LOOP
            v_i := v_i + 1;
            IF v_periods[v_i] = 'none' THEN
                UPDATE budgets AS b
                SET reserved_micros = b.reserved_micros + p_amount, updated_at = v_now
                WHERE b.id = v_id
                  AND b.spent_micros + b.reserved_micros + p_amount <= b.limit_micros
                RETURNING b.* INTO v_b;
            ELSE  -- a day / month budget: roll a finished period over first
                UPDATE budgets AS b
                SET spent_micros = CASE WHEN wflo_period_rolled(b.period, b.period_start,
                                                                v_now)
                                        THEN 0 ELSE b.spent_micros END,
                    thresholds_emitted = CASE WHEN wflo_period_rolled(b.period,
                                                                      b.period_start, v_now)
                                              THEN 0 ELSE b.thresholds_emitted END,
                    period_start = CASE WHEN wflo_period_rolled(b.period, b.period_start,
                                                                v_now)
                                        THEN wflo_period_start(b.period, v_now)
                                        ELSE b.period_start END,
                    reserved_micros = b.reserved_micros + p_amount,
                    updated_at = v_now
                WHERE b.id = v_id
                  AND CASE WHEN wflo_period_rolled(b.period, b.period_start, v_now) THEN 0
                           ELSE b.spent_micros END
                      + b.reserved_micros + p_amount <= b.limit_micros
                RETURNING b.* INTO v_b;
            END IF;
            IF NOT FOUND THEN
                v_refused := v_id;
                EXIT;
            END IF;
            v_done := v_done || v_id;
            v_payload := json_build_object(
                'kind', v_b.scope_kind, 'key', v_b.scope_key,
                'name', CASE WHEN v_b.scope_kind = 'team' THEN 'team ' || v_b.scope_key
                             ELSE v_b.scope_kind END,
                'limit_micros', v_b.limit_micros, 'spent_micros', v_b.spent_micros,
                'reserved_micros', v_b.reserved_micros, 'period', v_b.period,
                'period_start', v_b.period_start,
                'thresholds_emitted', wflo_thresholds(v_b.thresholds_emitted),
                'op', 'reserve', 'reservation', p_rid, 'amount_micros', p_amount);
            v_payloads := v_payloads || v_payload;
        END LOOP;
    END IF;
    IF coalesce(cardinality(v_ids), 0) <> cardinality(p_kinds) OR v_refused IS NOT NULL THEN
        -- undo the reservation and every budget already updated, then report the numbers
        RAISE EXCEPTION USING ERRCODE = 'WB001', MESSAGE = 'wflo: reservation refused',
            DETAIL = (
                SELECT jsonb_build_object(
                    'has_expired', EXISTS (SELECT 1 FROM reservations AS x
                                           WHERE x.state = 'held'
                                             AND x.lease_expires_at < v_now),
                    'refused', v_refused,
                    'budgets', coalesce(jsonb_agg(jsonb_build_object(
                        'id', b.id, 'kind', q.kind, 'key', q.key,
                        'limit_micros', b.limit_micros,
                        'spent_micros', CASE WHEN wflo_period_rolled(b.period,
                                                                     b.period_start, v_now)
                                             THEN 0 ELSE b.spent_micros END,
                        'reserved_micros', b.reserved_micros
                            - CASE WHEN b.id = ANY(v_done) THEN p_amount ELSE 0 END)
                        ORDER BY q.ord), '[]'))
                FROM unnest(p_kinds, p_keys) WITH ORDINALITY AS q(kind, key, ord)
                LEFT JOIN budgets AS b ON b.scope_kind = q.kind AND b.scope_key = q.key)::text;
    END IF;
    -- the live feed: the budgets' new numbers (sent at commit)
    PERFORM pg_notify('wflo_budget', u.p::text) FROM unnest(v_payloads) AS u(p);
    RETURN QUERY SELECT u.p, v_lease, v_has_expired FROM unnest(v_payloads) AS u(p);
END
$$;
"""


def upgrade() -> None:
    op.add_column(
        "reservations",
        sa.Column(
            "budget_ids",
            postgresql.ARRAY(sa.BigInteger()),
            nullable=False,
            server_default=sa.text("'{}'::bigint[]"),
        ),
    )
    op.execute(
        "UPDATE reservations AS r SET budget_ids = coalesce((SELECT array_agg(rb.budget_id "
        "ORDER BY rb.budget_id) FROM reservation_budgets AS rb "
        "WHERE rb.reservation_id = r.id), '{}')"
    )
    op.execute(_finish_0003())  # before the table it no longer reads is dropped
    op.drop_index("ix_reservation_budgets_budget", table_name="reservation_budgets")
    op.drop_table("reservation_budgets")
    op.drop_constraint("outbox_event_id_key", "outbox", type_="unique")
    op.execute(_THRESHOLDS)
    op.execute(f"DROP FUNCTION wflo_reserve({_RESERVE_0002_ARGS})")
    op.execute(_RESERVE)


def downgrade() -> None:
    op.create_table(
        "reservation_budgets",
        sa.Column(
            "reservation_id",
            sa.String(36),
            sa.ForeignKey("reservations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "budget_id",
            sa.BigInteger(),
            sa.ForeignKey("budgets.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_reservation_budgets_budget", "reservation_budgets", ["budget_id"])
    op.execute(
        "INSERT INTO reservation_budgets (reservation_id, budget_id) "
        "SELECT r.id, u.bid FROM reservations AS r CROSS JOIN unnest(r.budget_ids) AS u(bid) "
        "JOIN budgets AS b ON b.id = u.bid"
    )
    op.execute(f"DROP FUNCTION wflo_reserve({_RESERVE_0002_ARGS}, boolean)")
    for name in ("wflo_thresholds", "wflo_reserve", "wflo_finish"):
        op.execute(_function_0002(name))
    op.create_unique_constraint("outbox_event_id_key", "outbox", ["event_id"])
    op.drop_column("reservations", "budget_ids")
