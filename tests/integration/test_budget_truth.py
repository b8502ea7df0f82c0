"""One truth for budget periods and thresholds: the Python rules (``core/budget.py``) and
their PL/pgSQL twins (the functions the Alembic migrations create) agree on generated
inputs.

- period start and roll-over: ``period_start`` / ``needs_reset`` against
  ``wflo_period_start`` / ``wflo_period_rolled``, at instants near day and month ends
  (leap days, century years), seen from any UTC offset and any session time zone;
- thresholds: ``reached_thresholds`` / ``thresholds_from_mask`` against
  ``wflo_reached_mask`` / ``wflo_thresholds`` and the lookup list in
  ``wflo_budget_payload``, over the whole ``bigint`` range of limits and spending;
- money moves: ``wflo_reserve`` then ``wflo_finish`` (settle, release, expire) on 1-3
  budgets with generated stored states (limit, spent, reserved, emitted-threshold mask,
  period, period start), on a database clock set per statement, against the Python model
  (``BudgetRow.from_row`` rolls a period over, ``fits`` decides a reservation,
  ``crossed_thresholds`` decides the announcements): the rows left behind, the returned
  states, the refusal's numbers, the ``Settlement`` and the outbox events.

The database clock: ``now()`` inside the functions resolves through ``search_path``; a
``wflo_truth_clock.now()`` placed before ``pg_catalog`` returns the instant in the
setting ``wflo_truth.now`` (only inside this test's own transactions, which all roll
back).
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from wflo_jupyter.core.budget import (
    PERIODS,
    THRESHOLDS,
    BudgetScope,
    BudgetState,
    crossed_thresholds,
    fits,
    needs_reset,
    period_start,
    reached_thresholds,
    thresholds_from_mask,
    thresholds_mask,
)
from wflo_jupyter.ledger.budget_rows import (
    BUDGET_COLUMNS,
    BudgetRow,
    state_from_payload,
    state_from_row,
)
from wflo_jupyter.ledger.finish import Finisher
from wflo_jupyter.ledger.hot import HotConnections
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

BIGINT_MAX = 2**63 - 1
KINDS = ("cell", "notebook", "team")
KEY = "truth"
LEASE_S = 60.0
# session time zones with odd offsets: the SQL must not depend on them
ZONES = (
    "UTC",
    "America/New_York",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
)
TRUTH = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_CLOCK = """
CREATE FUNCTION wflo_truth_clock.now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT current_setting('wflo_truth.now')::timestamptz
$$
"""


@pytest.fixture
def engine(fresh_database_url: str) -> Iterator[Engine]:
    """A migrated database with the settable clock."""
    ledger = Ledger.connect(fresh_database_url)
    with ledger.engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA wflo_truth_clock"))
        conn.execute(text(_CLOCK))
    yield ledger.engine
    ledger.close()


def _session(conn: Connection, zone: str) -> None:
    """This transaction: session time zone ``zone``, ``now()`` from the settable clock."""
    conn.execute(
        text(
            "SELECT set_config('TimeZone', :zone, true), "
            "set_config('search_path', 'wflo_truth_clock, pg_catalog, \"$user\", public', true)"
        ),
        {"zone": zone},
    )


def _set_clock(conn: Connection, now: datetime) -> None:
    conn.execute(text("SELECT set_config('wflo_truth.now', :now, true)"), {"now": now.isoformat()})
    assert conn.execute(text("SELECT now()")).scalar_one() == now  # the clock is ours


# -- strategies ---------------------------------------------------------------------------------
@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """Instants near the boundaries that matter (the first and last days of months, leap
    days, 2000 and 2100), a microsecond or a few seconds either side of midnight UTC, or
    anywhere in the day; seen from an arbitrary UTC offset."""
    year = draw(st.sampled_from([1999, 2000, 2023, 2024, 2099, 2100]) | st.integers(1901, 2399))
    month = draw(st.integers(1, 12))
    last = calendar.monthrange(year, month)[1]
    day = draw(st.sampled_from(sorted({1, 2, 28, last - 1, last})) | st.integers(1, last))
    micros = draw(
        st.sampled_from([0, -1, 1])
        | st.integers(-3_000_000, 3_000_000)
        | st.integers(0, 86_400_000_000 - 1)
    )
    instant = datetime(year, month, day, tzinfo=UTC) + timedelta(microseconds=micros)
    offset = timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60)))
    return instant.astimezone(timezone(offset))


@st.composite
def stored_starts(draw: st.DrawFn, now: datetime) -> datetime | None:
    """A budget's stored period start as seen at ``now``: none yet, the start of the
    current / previous / next day or month, a microsecond off one, or any instant."""
    choice = draw(st.sampled_from(["null", "aligned", "nudged", "any"]))
    if choice == "null":
        return None
    if choice == "any":
        return draw(instants())
    shift = timedelta(days=draw(st.sampled_from([0, 0, -1, 1, -31, 31, -366])))
    start = period_start(draw(st.sampled_from(["day", "month"])), now + shift)
    assert start is not None
    if choice == "nudged":
        start += timedelta(microseconds=draw(st.sampled_from([-1, 1])))
    return start


def limits() -> st.SearchStrategy[int]:
    return (
        st.integers(0, 3)
        | st.integers(0, 10**7)
        | st.integers(0, BIGINT_MAX)
        | st.sampled_from(
            [BIGINT_MAX, BIGINT_MAX // 100, BIGINT_MAX // 100 + 1, BIGINT_MAX // 50 + 1, 10**15]
        )
    )


@st.composite
def spent_near(draw: st.DrawFn, limit: int, most: int) -> int:
    """An amount spent against ``limit``, often exactly at (or one off) a threshold."""
    threshold = draw(st.sampled_from(THRESHOLDS))
    at = -(-threshold * limit // 100)  # the least amount that reaches the threshold
    value = draw(
        st.integers(at - 2, at + 2)
        | st.integers(0, max(0, 2 * limit))
        | st.integers(0, most)
        | st.just(0)
    )
    return min(max(value, 0), most)


@st.composite
def threshold_cases(draw: st.DrawFn) -> tuple[int, int, int]:
    limit = draw(limits())
    return limit, draw(spent_near(limit, BIGINT_MAX)), draw(st.integers(0, 15))


@st.composite
def period_cases(draw: st.DrawFn) -> tuple[str, datetime, datetime | None]:
    now = draw(instants())
    return draw(st.sampled_from(PERIODS)), now, draw(stored_starts(now))


@st.composite
def stored_budgets(draw: st.DrawFn, now: datetime) -> dict[str, Any]:
    """A budget row as it may be stored (sums stay within ``bigint``)."""
    limit = draw(limits())
    period = draw(st.sampled_from(PERIODS))
    return {
        "limit_micros": limit,
        "spent_micros": draw(spent_near(limit, 2**62)),
        "reserved_micros": draw(st.integers(0, 3) | st.integers(0, 2**61)),
        "period": period,
        "period_start": draw(stored_starts(now)),
        "thresholds_emitted": draw(st.integers(0, 15)),
    }


# -- period start and roll-over -----------------------------------------------------------------
@TRUTH
@given(cases=st.lists(period_cases(), min_size=1, max_size=20), zone=st.sampled_from(ZONES))
def test_period_start_and_rollover_agree(
    engine: Engine, cases: list[tuple[str, datetime, datetime | None]], zone: str
) -> None:
    with engine.connect() as conn:
        _session(conn, zone)
        rows = conn.execute(
            text(
                "SELECT wflo_period_start(c.p, c.n), wflo_period_rolled(c.p, c.s, c.n) "
                "FROM unnest(CAST(:p AS text[]), CAST(:n AS timestamptz[]), "
                "CAST(:s AS timestamptz[])) WITH ORDINALITY AS c(p, n, s, i) ORDER BY c.i"
            ),
            {"p": [c[0] for c in cases], "n": [c[1] for c in cases], "s": [c[2] for c in cases]},
        ).all()
    for (period, now, stored), (sql_start, sql_rolled) in zip(cases, rows, strict=True):
        assert sql_start == period_start(period, now), (period, now)
        assert sql_rolled == needs_reset(period, stored, now), (period, stored, now)


# -- thresholds ---------------------------------------------------------------------------------
@TRUTH
@given(cases=st.lists(threshold_cases(), min_size=1, max_size=20))
def test_threshold_rules_agree(engine: Engine, cases: list[tuple[int, int, int]]) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT wflo_reached_mask(c.l, c.s), wflo_thresholds(c.m), "
                "wflo_budget_payload(jsonb_populate_record(NULL::budgets, jsonb_build_object("
                "'scope_kind', 'team', 'scope_key', 'k', 'limit_micros', c.l, "
                "'spent_micros', c.s, 'thresholds_emitted', c.m))) -> 'thresholds_emitted' "
                "FROM unnest(CAST(:l AS bigint[]), CAST(:s AS bigint[]), CAST(:m AS int[])) "
                "WITH ORDINALITY AS c(l, s, m, i) ORDER BY c.i"
            ),
            {"l": [c[0] for c in cases], "s": [c[1] for c in cases], "m": [c[2] for c in cases]},
        ).all()
    for (limit, spent, mask), (sql_reached, sql_list, payload_list) in zip(
        cases, rows, strict=True
    ):
        assert sql_reached == thresholds_mask(reached_thresholds(limit, spent)), (limit, spent)
        assert tuple(sql_list) == tuple(payload_list) == thresholds_from_mask(mask), mask


# -- money moves --------------------------------------------------------------------------------
def _rows(conn: Connection, ids: list[int]) -> list[Any]:
    return conn.execute(
        text(
            f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE id = ANY(CAST(:ids AS bigint[])) "
            "ORDER BY array_position(CAST(:ids AS bigint[]), id)"
        ),
        {"ids": ids},
    ).all()


def _states(rows: list[Any]) -> list[BudgetState]:
    """The budget rows exactly as stored (no roll-over)."""
    return [
        state_from_row(r, int(r.spent_micros), int(r.thresholds_emitted), r.period_start)
        for r in rows
    ]


def _last_event(conn: Connection) -> int:
    return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox")).scalar_one())


def _events(conn: Connection, since: int) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        text("SELECT event_type, envelope FROM outbox WHERE id > :since ORDER BY id"),
        {"since": since},
    ).all()
    return [(r.event_type, dict(r.envelope["payload"])) for r in rows]


def _insert_budgets(
    conn: Connection, scopes: list[BudgetScope], stored: list[dict[str, Any]]
) -> list[int]:
    return [
        conn.execute(
            text(
                "INSERT INTO budgets (scope_kind, scope_key, limit_micros, spent_micros, "
                "reserved_micros, period, period_start, thresholds_emitted) VALUES (:kind, "
                ":key, :limit_micros, :spent_micros, :reserved_micros, :period, "
                ":period_start, :thresholds_emitted) RETURNING id"
            ),
            {"kind": scope.kind, "key": scope.key, **budget},
        ).scalar_one()
        for scope, budget in zip(scopes, stored, strict=True)
    ]


def _reserve(
    conn: Connection, scopes: list[BudgetScope], amount: int
) -> tuple[list[Any], dict[str, Any] | None]:
    """``wflo_reserve`` (in a savepoint): its rows, or the refusal's detail."""
    try:
        with conn.begin_nested():
            rows = conn.execute(
                text(
                    "SELECT payload, lease_expires_at FROM wflo_reserve(CAST(:kinds AS text[]), "
                    "CAST(:keys AS text[]), CAST(:amount AS bigint), 'truth-r', "
                    "CAST(:lease AS double precision), NULL, NULL, 'truth', 'wflo.costs', "
                    "false)"
                ),
                {
                    "kinds": [s.kind for s in scopes],
                    "keys": [s.key for s in scopes],
                    "amount": amount,
                    "lease": LEASE_S,
                },
            ).all()
            return rows, None
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "WB001":
            raise
        return [], json.loads(exc.orig.diag.message_detail)  # type: ignore[union-attr]


@TRUTH
@given(
    data=st.data(),
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3, unique=True),
    zone=st.sampled_from(ZONES),
    reserve_at=instants(),
    op=st.sampled_from(["settle", "release", "expire"]),
)
def test_money_moves_agree(
    engine: Engine,
    data: st.DataObject,
    kinds: list[str],
    zone: str,
    reserve_at: datetime,
    op: str,
) -> None:
    stored = [data.draw(stored_budgets(reserve_at), label=kind) for kind in kinds]
    amount = data.draw(st.integers(0, 3) | st.integers(0, 2**60), label="amount")
    actual = data.draw(st.integers(0, 3) | st.integers(0, 2**60), label="actual")
    actual = actual if op == "settle" else 0
    finish_at = reserve_at + timedelta(
        microseconds=data.draw(
            st.sampled_from([0, 1, -1])
            | st.integers(-86_400_000_000, 86_400_000_000)
            | st.integers(0, 62 * 86_400_000_000),
            label="finish after (us)",
        )
    )
    scopes = [BudgetScope(kind, KEY) for kind in kinds]  # type: ignore[arg-type]
    finisher = Finisher(HotConnections(engine))  # in_transaction only: no hot connection
    with engine.connect() as conn:  # never committed: every example rolls back
        _session(conn, zone)
        _set_clock(conn, reserve_at)
        ids = _insert_budgets(conn, scopes, stored)
        before = _rows(conn, ids)

        # reserve: Python rolls each budget's period over and asks whether the amount fits
        model = [BudgetRow.from_row(row, reserve_at) for row in before]
        room = all(fits(b.limit, b.spent, b.reserved, amount) for b in model)
        returned, refusal = _reserve(conn, scopes, amount)
        rolled = sum(needs_reset(r.period, r.period_start, reserve_at) for r in before)
        event(f"reserve: {'refused' if refusal else 'accepted'}, {rolled} rolled over")
        assert (refusal is None) == room, (model, amount, refusal)
        if refusal is None:
            for budget in model:
                budget.reserved += amount
            lease = reserve_at + timedelta(seconds=LEASE_S)
            assert all(row.lease_expires_at == lease for row in returned)
            in_lock_order = sorted(model, key=lambda b: KINDS.index(b.scope.kind))
            assert [state_from_payload(r.payload) for r in returned] == [
                b.state() for b in in_lock_order
            ]
            assert _states(_rows(conn, ids)) == [b.state() for b in model]
        else:
            # nothing moved; the refusal reports the numbers after the roll-over
            assert _rows(conn, ids) == before
            assert [(b["spent_micros"], b["reserved_micros"]) for b in refusal["budgets"]] == [
                (b.spent, b.reserved) for b in model
            ]
            conn.execute(
                text(
                    "INSERT INTO reservations (id, amount_micros, state, lease_expires_at, "
                    "label, budget_ids) VALUES ('truth-r', :amount, 'held', "
                    "now() + make_interval(secs => :lease), 'truth', CAST(:ids AS bigint[]))"
                ),
                {"amount": amount, "lease": LEASE_S, "ids": ids},
            )

        # finish: Python rolls over again, spends, frees and decides what is announced
        _set_clock(conn, finish_at)
        expected: dict[BudgetScope, BudgetState] = {}
        announced: list[tuple[BudgetScope, int]] = []
        reset: dict[BudgetScope, bool] = {}
        for row in _rows(conn, ids):
            budget = BudgetRow.from_row(row, finish_at)
            reset[budget.scope] = needs_reset(budget.period, row.period_start, finish_at)
            after = budget.spent + actual
            crossed = crossed_thresholds(budget.limit, budget.spent, after, budget.mask)
            budget.spent = after
            budget.reserved = max(0, budget.reserved - amount)
            budget.mask |= thresholds_mask(crossed)
            expected[budget.scope] = budget.state()
            announced += [(budget.scope, t) for t in crossed]
        event(f"finish: {sum(reset.values())} rolled over, {len(announced)} thresholds")
        since = _last_event(conn)
        lease_before = reserve_at + timedelta(seconds=2 * LEASE_S) if op == "expire" else None
        settlement = finisher.in_transaction(
            conn, "truth-r", actual, None, op=op, lease_before=lease_before
        )
        assert not settlement.already_settled
        assert {s.scope: s for s in settlement.budgets} == expected
        assert len(settlement.budgets) == len(scopes)
        assert _states(_rows(conn, ids)) == [expected[s] for s in scopes]
        assert sorted((t.scope, t.threshold) for t in settlement.thresholds) == sorted(announced)
        events = _events(conn, since)
        updates = {
            BudgetScope(p["kind"], p["key"]): p for kind, p in events if kind == "budget.updated"
        }
        assert {scope: state_from_payload(p) for scope, p in updates.items()} == expected
        assert {scope: p["reset"] for scope, p in updates.items()} == reset
        thresholds = [p for kind, p in events if kind == "budget.threshold"]
        scope_of = [BudgetScope(p["kind"], p["key"]) for p in thresholds]
        sql_announced = [(s, p["threshold"]) for s, p in zip(scope_of, thresholds, strict=True)]
        assert sorted(sql_announced) == sorted(announced)
        assert [state_from_payload(p) for p in thresholds] == [expected[s] for s in scope_of]
