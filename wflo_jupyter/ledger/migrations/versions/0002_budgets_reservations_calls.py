"""budgets, reservations, llm calls and compute charges

Tables: budgets (cell / notebook / team, limit, period, spent, reserved, emitted
thresholds), reservations and reservation_budgets (which budgets each one holds), llm_calls,
compute_charges. Functions: wflo_reserve and wflo_finish, the money-moving statements of
ledger/budgets.py, with their helpers (period start and roll-over, threshold bitmask,
budget event payloads).

Revision ID: 0002
Revises: 0001
"""

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# The money-moving SQL (see ledger/reservations.py for the protocol and its proof). Each
# function runs as one statement; inside it every statement sees the rows as they are
# now. Locks are taken in one global order: reservation, step, budgets by ascending id.
_FUNCTIONS = [
    """
CREATE FUNCTION wflo_period_start(p_period text, p_now timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE p_period WHEN 'day' THEN date_trunc('day', p_now, 'UTC')
                         WHEN 'month' THEN date_trunc('month', p_now, 'UTC') END
$$;
""",
    """
CREATE FUNCTION wflo_period_rolled(p_period text, p_start timestamptz, p_now timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT p_period <> 'none'
           AND (p_start IS NULL OR p_start < wflo_period_start(p_period, p_now))
$$;
""",
    """
CREATE FUNCTION wflo_reached_mask(p_limit bigint, p_spent bigint) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_limit <= 0 THEN CASE WHEN p_spent > 0 THEN 15 ELSE 0 END
           ELSE (CASE WHEN p_spent * 100 >= 50 * p_limit THEN 1 ELSE 0 END)
              | (CASE WHEN p_spent * 100 >= 75 * p_limit THEN 2 ELSE 0 END)
              | (CASE WHEN p_spent * 100 >= 90 * p_limit THEN 4 ELSE 0 END)
              | (CASE WHEN p_spent * 100 >= 100 * p_limit THEN 8 ELSE 0 END) END
$$;
""",
    """
CREATE FUNCTION wflo_thresholds(p_mask integer) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_agg(u.t ORDER BY u.i), '[]'::jsonb)
    FROM unnest(ARRAY[50, 75, 90, 100]) WITH ORDINALITY AS u(t, i)
    WHERE (p_mask >> (u.i::int - 1)) & 1 = 1
$$;
""",
    """
CREATE FUNCTION wflo_budget_payload(p_b budgets) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'kind', p_b.scope_kind, 'key', p_b.scope_key,
        'name', CASE WHEN p_b.scope_kind = 'team' THEN 'team ' || p_b.scope_key
                     ELSE p_b.scope_kind END,
        'limit_micros', p_b.limit_micros, 'spent_micros', p_b.spent_micros,
        'reserved_micros', p_b.reserved_micros, 'period', p_b.period,
        'period_start', p_b.period_start,
        'thresholds_emitted', wflo_thresholds(p_b.thresholds_emitted))
$$;
""",
    """
CREATE FUNCTION wflo_budget_event(p_b budgets, p_type text, p_topic text, p_extra jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_id text := gen_random_uuid()::text;
    v_key text := p_b.scope_kind || ':' || p_b.scope_key;
    v_payload jsonb := wflo_budget_payload(p_b) || p_extra;
BEGIN
    INSERT INTO outbox (event_id, event_type, topic, key, envelope)
    VALUES (v_id, p_type, p_topic, v_key,
            jsonb_build_object('id', v_id, 'type', p_type, 'key', v_key,
                               'occurred_at', now(), 'payload', v_payload));
    IF p_type = 'budget.updated' THEN
        PERFORM pg_notify('wflo_budget', v_payload::text);
    END IF;
END
$$;
""",
    """
CREATE FUNCTION wflo_reserve(
    p_kinds text[], p_keys text[], p_amount bigint, p_rid text, p_lease_s double precision,
    p_step_id text, p_call_id text, p_label text, p_topic text)
RETURNS TABLE (payload jsonb, lease_expires_at timestamptz, has_expired boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_ids bigint[];
    v_id bigint;
    v_ok boolean := true;
    v_payload jsonb;
    v_payloads jsonb[] := '{}';
    v_has_expired boolean;
    v_done bigint[] := '{}';
    v_refused bigint;
    v_lease timestamptz;
BEGIN
    -- Everything that needs no budget lock first; a refusal rolls it all back.
    v_has_expired := EXISTS (SELECT 1 FROM reservations AS x
                             WHERE x.state = 'held' AND x.lease_expires_at < v_now);
    INSERT INTO reservations AS r (id, amount_micros, state, lease_expires_at, step_id,
                                   call_id, label)
    VALUES (p_rid, p_amount, 'held', v_now + make_interval(secs => p_lease_s), p_step_id,
            p_call_id, p_label)
    RETURNING r.lease_expires_at INTO v_lease;
    SELECT array_agg(b.id ORDER BY b.id) INTO v_ids FROM budgets AS b
    WHERE (b.scope_kind, b.scope_key) IN (SELECT * FROM unnest(p_kinds, p_keys));
    -- its event (one per budget) is written before any budget is locked: it says what was
    -- reserved; the budgets' totals travel in the NOTIFY below and in the settle events
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
    IF coalesce(cardinality(v_ids), 0) <> cardinality(p_kinds) THEN
        v_ok := false;
    ELSE
        -- One conditional UPDATE per budget, ascending id (the global lock order). Each
        -- locks its row and tests the limit on the newest committed version of it, after
        -- rolling a day/month period over; the first one without room ends the loop.
        FOREACH v_id IN ARRAY v_ids LOOP
            UPDATE budgets AS b
            SET spent_micros = CASE WHEN wflo_period_rolled(b.period, b.period_start, v_now)
                                    THEN 0 ELSE b.spent_micros END,
                thresholds_emitted = CASE WHEN wflo_period_rolled(b.period, b.period_start,
                                                                  v_now)
                                          THEN 0 ELSE b.thresholds_emitted END,
                period_start = CASE WHEN wflo_period_rolled(b.period, b.period_start, v_now)
                                    THEN wflo_period_start(b.period, v_now)
                                    ELSE b.period_start END,
                reserved_micros = b.reserved_micros + p_amount,
                updated_at = v_now
            WHERE b.id = v_id
              AND CASE WHEN wflo_period_rolled(b.period, b.period_start, v_now) THEN 0
                       ELSE b.spent_micros END + b.reserved_micros + p_amount <= b.limit_micros
            RETURNING wflo_budget_payload(b) INTO v_payload;
            IF NOT FOUND THEN
                v_ok := false;
                v_refused := v_id;
                EXIT;
            END IF;
            v_done := v_done || v_id;
            v_payloads := v_payloads || v_payload;
        END LOOP;
    END IF;
    IF NOT v_ok THEN
        -- undo the reservation and every budget already updated, then report the numbers
        RAISE EXCEPTION USING ERRCODE = 'WB001', MESSAGE = 'wflo: reservation refused',
            DETAIL = (
                SELECT jsonb_build_object(
                    'has_expired', v_has_expired,
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
    INSERT INTO reservation_budgets (reservation_id, budget_id)
    SELECT p_rid, u.bid FROM unnest(v_ids) AS u(bid);
    -- the live feed: the budgets' new numbers (sent at commit)
    PERFORM pg_notify('wflo_budget', (u.p || jsonb_build_object(
                'op', 'reserve', 'reservation', p_rid, 'amount_micros', p_amount))::text)
    FROM unnest(v_payloads) AS u(p);
    RETURN QUERY SELECT u.p, v_lease, v_has_expired FROM unnest(v_payloads) AS u(p);
END
$$;
""",
    """
CREATE FUNCTION wflo_finish(
    p_rid text, p_actual bigint, p_op text, p_from text[], p_to text, p_check_lease boolean,
    p_lease_before timestamptz, p_budget_topic text, p_llm_topic text, p_call jsonb)
RETURNS TABLE (id bigint, scope_kind text, scope_key text, limit_micros bigint,
               spent_micros bigint, reserved_micros bigint, period text,
               period_start timestamptz, thresholds_emitted integer, spent_before bigint,
               mask_before integer, from_state text, held bigint, seen_state text,
               seen_actual bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_state text;
    v_amount bigint;
    v_step text;
    v_held bigint;
    v_ids bigint[];
    v_reset bigint[];
    v_spent bigint[];
    v_mask integer[];
    v_call_id text;
    v_call jsonb;
BEGIN
    -- 1. the reservation row first (the global lock order: reservation, step, budgets)
    SELECT r.state, r.amount_micros, r.step_id INTO v_state, v_amount, v_step
    FROM reservations AS r
    WHERE r.id = p_rid AND r.state = ANY(p_from)
      AND (NOT p_check_lease OR r.lease_expires_at < coalesce(p_lease_before, v_now))
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::text, NULL::timestamptz, NULL::integer, NULL::bigint,
            NULL::integer, NULL::text, NULL::bigint, r.state::text, r.actual_micros
        FROM (SELECT 1) AS one LEFT JOIN reservations AS r ON r.id = p_rid;
        RETURN;
    END IF;
    v_held := CASE WHEN v_state = 'held' THEN v_amount ELSE 0 END;
    -- 2. the reservation, the step and the call: no budget lock is held yet
    UPDATE reservations AS r SET state = p_to, actual_micros = p_actual, settled_at = v_now
    WHERE r.id = p_rid;
    IF p_actual > 0 AND v_step IS NOT NULL THEN
        UPDATE steps AS s SET cost_micros = s.cost_micros + p_actual WHERE s.id = v_step;
    END IF;
    IF p_call IS NOT NULL THEN
        v_call := p_call || jsonb_build_object('step_id', v_step, 'reservation_id', p_rid,
                                               'cost_micros', p_actual, 'created_at', v_now);
        INSERT INTO llm_calls SELECT * FROM jsonb_populate_record(NULL::llm_calls, v_call);
        v_call_id := gen_random_uuid()::text;
        INSERT INTO outbox (event_id, event_type, topic, key, envelope)
        VALUES (v_call_id, 'llm.call', p_llm_topic, coalesce(v_step, v_call ->> 'id'),
                jsonb_build_object('id', v_call_id, 'type', 'llm.call',
                                   'key', coalesce(v_step, v_call ->> 'id'),
                                   'occurred_at', v_now,
                                   'payload', (v_call - 'created_at')
                                              || jsonb_build_object('call_id', v_call ->> 'id')));
    END IF;
    -- 3. its budgets, ascending id, locked last and briefly
    SELECT array_agg(l.id ORDER BY l.id) INTO v_ids FROM (
        SELECT b.id FROM budgets AS b
        WHERE b.id IN (SELECT rb.budget_id FROM reservation_budgets AS rb
                       WHERE rb.reservation_id = p_rid)
        ORDER BY b.id FOR NO KEY UPDATE) AS l;
    WITH r AS (
        UPDATE budgets AS b SET spent_micros = 0, thresholds_emitted = 0,
               period_start = wflo_period_start(b.period, v_now), updated_at = v_now
        WHERE b.id = ANY(v_ids) AND wflo_period_rolled(b.period, b.period_start, v_now)
        RETURNING b.id)
    SELECT array_agg(r.id) INTO v_reset FROM r;
    SELECT array_agg(b.spent_micros ORDER BY b.id),
           array_agg(b.thresholds_emitted::integer ORDER BY b.id)
      INTO v_spent, v_mask FROM budgets AS b WHERE b.id = ANY(v_ids);
    UPDATE budgets AS b
    SET spent_micros = b.spent_micros + p_actual,
        reserved_micros = greatest(0, b.reserved_micros - v_held),
        thresholds_emitted = b.thresholds_emitted
                             | wflo_reached_mask(b.limit_micros, b.spent_micros + p_actual),
        updated_at = v_now
    WHERE b.id = ANY(v_ids);
    PERFORM wflo_budget_event(b, 'budget.updated', p_budget_topic,
                jsonb_build_object('op', p_op, 'reservation', p_rid, 'actual_micros', p_actual,
                                   'late', v_state = 'expired',
                                   'reset', coalesce(b.id = ANY(v_reset), false)))
    FROM budgets AS b WHERE b.id = ANY(v_ids) ORDER BY b.id;
    PERFORM wflo_budget_event(b, 'budget.threshold', p_budget_topic,
                jsonb_build_object('threshold', t.pct))
    FROM budgets AS b
    JOIN unnest(v_ids, v_mask) AS o(bid, mask) ON o.bid = b.id
    CROSS JOIN unnest(ARRAY[50, 75, 90, 100]) WITH ORDINALITY AS t(pct, i)
    WHERE (((b.thresholds_emitted & ~o.mask) >> (t.i::int - 1)) & 1) = 1
    ORDER BY b.id, t.i;
    RETURN QUERY  -- one row per budget, or a single row when the reservation had none
    SELECT x.id, x.kind, x.key, x.limit_micros, x.spent_micros, x.reserved_micros, x.period,
           x.period_start, x.mask_now, x.spent, x.mask, v_state, v_held, v_state, NULL::bigint
    FROM (SELECT 1) AS one
    LEFT JOIN (
        SELECT b.id, b.scope_kind::text AS kind, b.scope_key::text AS key, b.limit_micros,
               b.spent_micros, b.reserved_micros, b.period::text AS period, b.period_start,
               b.thresholds_emitted::integer AS mask_now, o.spent, o.mask
        FROM budgets AS b
        JOIN unnest(v_ids, v_spent, v_mask) AS o(bid, spent, mask) ON o.bid = b.id
    ) AS x ON true
    ORDER BY x.id;
END
$$;
""",
]
_DROP_FUNCTIONS = [
    "wflo_finish(text, bigint, text, text[], text, boolean, timestamptz, text, text, jsonb)",
    "wflo_reserve(text[], text[], bigint, text, double precision, text, text, text, text)",
    "wflo_budget_event(budgets, text, text, jsonb)",
    "wflo_budget_payload(budgets)",
    "wflo_thresholds(integer)",
    "wflo_reached_mask(bigint, bigint)",
    "wflo_period_rolled(text, timestamptz, timestamptz)",
    "wflo_period_start(text, timestamptz)",
]


def _created(name: str = "created_at") -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_key", sa.String(255), nullable=False),
        sa.Column("limit_micros", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(8), nullable=False, server_default="none"),
        sa.Column("period_start", sa.DateTime(timezone=True)),
        sa.Column("spent_micros", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved_micros", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("thresholds_emitted", sa.SmallInteger(), nullable=False, server_default="0"),
        _created(),
        _created("updated_at"),
        sa.UniqueConstraint("scope_kind", "scope_key", name="uq_budgets_scope"),
        sa.CheckConstraint(
            "scope_kind IN ('cell', 'notebook', 'team')", name="ck_budgets_scope_kind"
        ),
        sa.CheckConstraint("period IN ('none', 'day', 'month')", name="ck_budgets_period"),
        sa.CheckConstraint("limit_micros >= 0", name="ck_budgets_limit"),
        sa.CheckConstraint("spent_micros >= 0", name="ck_budgets_spent"),
        sa.CheckConstraint("reserved_micros >= 0", name="ck_budgets_reserved"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("actual_micros", sa.BigInteger()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_id", sa.String(36), sa.ForeignKey("steps.id", ondelete="SET NULL")),
        sa.Column("call_id", sa.String(64)),
        sa.Column("label", sa.Text()),
        _created(),
        sa.Column("settled_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "state IN ('held', 'settled', 'released', 'expired')", name="ck_reservations_state"
        ),
        sa.CheckConstraint("amount_micros >= 0", name="ck_reservations_amount"),
    )
    op.create_index(
        "ix_reservations_held_lease",
        "reservations",
        ["lease_expires_at"],
        postgresql_where=sa.text("state = 'held'"),
    )
    op.create_index("ix_reservations_step", "reservations", ["step_id"])
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
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("step_id", sa.String(36), sa.ForeignKey("steps.id", ondelete="CASCADE")),
        sa.Column(
            "reservation_id",
            sa.String(36),
            sa.ForeignKey("reservations.id", ondelete="SET NULL"),
        ),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("saved_micros", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cached", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("simulated", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("latency_ms", sa.Integer()),
        sa.Column("request_hash", sa.String(64)),
        _created(),
    )
    op.create_index("ix_llm_calls_step_created", "llm_calls", ["step_id", "created_at"])
    op.create_index("ix_llm_calls_model_created", "llm_calls", ["model", "created_at"])
    op.create_index("ix_llm_calls_request_hash", "llm_calls", ["request_hash"])
    op.create_table(
        "compute_charges",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("step_id", sa.String(36), sa.ForeignKey("steps.id", ondelete="CASCADE")),
        sa.Column("cpu_seconds", sa.Numeric(18, 6), nullable=False),
        sa.Column("price_per_cpu_second_micros", sa.Numeric(18, 6), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        _created(),
    )
    op.create_index("ix_compute_charges_step", "compute_charges", ["step_id"])
    for statement in _FUNCTIONS:
        op.execute(statement)


def downgrade() -> None:
    for signature in _DROP_FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.drop_index("ix_compute_charges_step", table_name="compute_charges")
    op.drop_table("compute_charges")
    op.drop_index("ix_llm_calls_request_hash", table_name="llm_calls")
    op.drop_index("ix_llm_calls_model_created", table_name="llm_calls")
    op.drop_index("ix_llm_calls_step_created", table_name="llm_calls")
    op.drop_table("llm_calls")
    op.drop_index("ix_reservation_budgets_budget", table_name="reservation_budgets")
    op.drop_table("reservation_budgets")
    op.drop_index("ix_reservations_step", table_name="reservations")
    op.drop_index("ix_reservations_held_lease", table_name="reservations")
    op.drop_table("reservations")
    op.drop_table("budgets")
