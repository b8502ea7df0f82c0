"""Budgets against real PostgreSQL: reserve / settle / release, refusals, enclosing budgets,
thresholds, the live feed, leases, periods, compute, migrations, and the concurrency
acceptance (8 processes, with and without SIGKILLed ones)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import queue
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from tests.helpers import start_step, wait_until
from wflo_jupyter.core.budget import (
    BudgetExceeded,
    BudgetNotFound,
    BudgetScope,
    describe_call,
    period_start,
    reached_thresholds,
    thresholds_mask,
)
from wflo_jupyter.core.pricing import Usage
from wflo_jupyter.ledger.budget_types import ReservationNotFound
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall
from wflo_jupyter.ledger.models import Base
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

LABEL = describe_call("gpt-4o-mini", 800)


@pytest.fixture
def ledger(fresh_database_url: str) -> Iterator[Ledger]:
    ledger = Ledger.connect(fresh_database_url)
    yield ledger
    ledger.close()


@pytest.fixture
def budgets(ledger: Ledger) -> BudgetLedger:
    return BudgetLedger(ledger.engine)


def _scalar(ledger: Ledger, sql: str, **params: Any) -> Any:
    with ledger.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _lease_over(ledger: Ledger, reservation_id: str) -> bool:
    """Has the reservation's lease ended, by the database's clock (as expiry judges it)?"""
    return bool(
        _scalar(
            ledger,
            "SELECT lease_expires_at < now() FROM reservations WHERE id = :i",
            i=reservation_id,
        )
    )


def _events(ledger: Ledger, event_type: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT envelope FROM outbox WHERE event_type = :t ORDER BY id"),
            {"t": event_type},
        ).scalars()
        return [dict(r["payload"]) for r in rows]


# -- schema ------------------------------------------------------------------------------------
def test_migrations_0002_to_0008_upgrade_and_downgrade(fresh_database_url: str) -> None:
    ledger = Ledger.connect(fresh_database_url)
    try:
        assert ledger.current_revision() == "0008_envelope_v2"
        tables = set(inspect(ledger.engine).get_table_names())
        new = {"budgets", "reservations", "llm_calls", "compute_charges"}
        assert new <= tables and "reservation_budgets" not in tables
        assert "outbox_relay" in tables
        functions = "SELECT count(*) FROM pg_proc WHERE proname LIKE 'wflo\\_%'"
        assert _scalar(ledger, functions) == 10  # 0008 adds wflo_outbox_envelope
        ledger.downgrade("0007_outbox_notify")
        assert _scalar(ledger, functions) == 9  # 0007 adds wflo_outbox_notify
        ledger.downgrade("0006")
        assert ledger.current_revision() == "0006"
        assert "outbox_relay" not in set(inspect(ledger.engine).get_table_names())
        assert _scalar(ledger, functions) == 8
        ledger.downgrade("0005")
        assert ledger.current_revision() == "0005"
        assert _scalar(ledger, functions) == 8
        ledger.downgrade("0004")
        assert ledger.current_revision() == "0004"
        ledger.downgrade("0003")
        assert ledger.current_revision() == "0003"
        assert _scalar(ledger, functions) == 8
        ledger.downgrade("0002")
        assert "reservation_budgets" in set(inspect(ledger.engine).get_table_names())
        assert _scalar(ledger, functions) == 8
        ledger.downgrade("0001")
        assert ledger.current_revision() == "0001"
        assert not new & set(inspect(ledger.engine).get_table_names())
        assert _scalar(ledger, functions) == 0
        ledger.migrate()
        assert ledger.current_revision() == "0008_envelope_v2"
        BudgetLedger(ledger.engine).set_budget("team", "after-upgrade", 1)
    finally:
        ledger.close()


@pytest.mark.parametrize("revision", ["0003", "0004", "0005"])
def test_every_threshold_mask_reads_the_same_in_payloads_and_events(
    fresh_database_url: str, revision: str
) -> None:
    """Migration 0004 looks the threshold list up instead of calling wflo_thresholds: for
    all 16 masks the reserve payload, the budget event payload and wflo_thresholds agree,
    before (0003) and after (0004)."""
    ledger = Ledger.connect(fresh_database_url, migrate=False)
    try:
        ledger.migrate(revision)
        budgets = BudgetLedger(ledger.engine)
        budgets.set_budget("team", "masks", 10**9)
        for mask in range(16):
            with ledger.engine.begin() as conn:
                conn.execute(text("UPDATE budgets SET thresholds_emitted = :m"), {"m": mask})
            reservation = budgets.reserve([("team", "masks")], 1)
            expected = tuple(t for i, t in enumerate((50, 75, 90, 100)) if mask >> i & 1)
            assert reservation.budgets[0].thresholds_emitted == expected, mask
            same = _scalar(
                ledger,
                "SELECT wflo_budget_payload(b) -> 'thresholds_emitted' = wflo_thresholds(:m) "
                "AND wflo_thresholds(:m) = CAST(:j AS jsonb) FROM budgets AS b",
                m=mask,
                j=json.dumps(list(expected)),
            )
            assert same is True, mask
    finally:
        ledger.close()


@pytest.mark.parametrize("revision", ["0004", "0005"])
def test_the_shared_budget_is_locked_last(fresh_database_url: str, revision: str) -> None:
    """While another transaction holds the team budget's row, a reserve against cell +
    notebook + team waits for it. From 0005 on it has already locked the cell and
    notebook rows, so the team row was next in its lock order. Before, in ascending id
    order, the older team row came first."""
    ledger = Ledger.connect(fresh_database_url, migrate=False)
    try:
        ledger.migrate(revision)
        budgets = BudgetLedger(ledger.engine)
        budgets.set_budget("team", "shared", 10_000)  # the oldest: the lowest id
        budgets.set_budget("notebook", "nb", 10_000)
        budgets.set_budget("cell", "c1", 10_000)
        scopes = [("cell", "c1"), ("notebook", "nb"), ("team", "shared")]
        holder = ledger.engine.connect()
        holder.execute(text("SELECT 1 FROM budgets WHERE scope_kind = 'team' FOR UPDATE"))
        done: list[Any] = []
        waiter = threading.Thread(target=lambda: done.append(budgets.reserve(scopes, 100)))
        waiter.start()
        try:
            wait_until(
                lambda: _scalar(
                    ledger,
                    "SELECT count(*) FROM pg_locks "
                    "WHERE NOT granted AND locktype = 'transactionid'",
                ),
                30,
                what="the reserve to wait for the team row",
            )
            probe = ledger.engine.connect()
            try:
                probe.execute(text("SET lock_timeout = '100ms'"))
                cell_free = True
                try:
                    probe.execute(
                        text("SELECT 1 FROM budgets WHERE scope_kind = 'cell' FOR NO KEY UPDATE")
                    )
                except Exception:  # lock_timeout: the waiting reserve holds the cell row
                    cell_free = False
                probe.rollback()
            finally:
                probe.close()
        finally:
            holder.rollback()
            holder.close()
            waiter.join(60)
        assert len(done) == 1
        assert cell_free is (revision == "0004")
        assert budgets.state("team", "shared").reserved_micros == 100
    finally:
        ledger.close()


def test_mixed_scopes_from_many_threads_never_deadlock(budgets: BudgetLedger) -> None:
    """Reserves and settles on overlapping sets of budgets from 6 threads at once: lock
    order is one total order, so no statement ever fails with a deadlock."""
    budgets.set_budget("team", "mixed", 10**9)
    for i in range(3):
        budgets.set_budget("notebook", f"nb{i}", 10**9)
        budgets.set_budget("cell", f"c{i}", 10**9)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for n in range(60):
                scopes = [("cell", f"c{(index + n) % 3}"), ("notebook", f"nb{n % 3}")]
                scopes.append(("team", "mixed"))
                held = budgets.reserve(scopes[n % 2 :], 10)
                if n % 3:
                    budgets.settle(held, 5)
                else:
                    budgets.release(held)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    team = budgets.state("team", "mixed")
    assert team.reserved_micros == 0
    assert team.spent_micros == 6 * 40 * 5


def test_migration_0003_keeps_held_money_both_ways(fresh_database_url: str) -> None:
    """Reservations held across an upgrade to 0003 (and a downgrade back to 0002) keep
    their budgets, and settle correctly afterwards."""
    ledger = Ledger.connect(fresh_database_url, migrate=False)
    try:
        ledger.migrate("0002")
        budgets = BudgetLedger(ledger.engine)
        budgets.set_budget("notebook", "nb", 1_000)
        budgets.set_budget("team", "t", 5_000)
        first = str(uuid.uuid4())  # reserved by 0002's wflo_reserve (today's has a new argument)
        with ledger.engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT * FROM wflo_reserve(ARRAY['notebook', 'team'], ARRAY['nb', 't'], "
                    "300, :r, 600, NULL, NULL, 'old', 'wflo.costs')"
                ),
                {"r": first},
            )
        ledger.migrate()
        ids = _scalar(ledger, "SELECT budget_ids FROM reservations WHERE id = :r", r=first)
        team_id = _scalar(ledger, "SELECT id FROM budgets WHERE scope_kind = 'team'")
        assert len(ids) == 2 and team_id in ids and ids == sorted(ids)
        second = budgets.reserve([("notebook", "nb"), ("team", "t")], 200)
        budgets.settle(first, 100)
        assert budgets.state("team", "t").reserved_micros == 200
        assert budgets.state("team", "t").spent_micros == 100
        ledger.downgrade("0002")
        links = "SELECT count(*) FROM reservation_budgets WHERE reservation_id = :r"
        assert _scalar(ledger, links, r=second.id) == 2
        budgets.settle(second, 50)  # 0002's wflo_finish reads the links back
        assert budgets.state("team", "t").reserved_micros == 0
        assert budgets.state("notebook", "nb").spent_micros == 150
    finally:
        ledger.close()


NEW_TABLES = {"budgets", "reservations", "llm_calls", "compute_charges"}


def _diff_table(entry: Any) -> str | None:
    """The table an alembic autogenerate diff entry is about."""
    op = entry[0] if isinstance(entry, list) else entry
    for part in op[1:4]:
        name = getattr(part, "name", None) if not isinstance(part, str) else part
        table = getattr(getattr(part, "table", None), "name", None)
        if table in NEW_TABLES or name in NEW_TABLES:
            return table or name
    return None


def test_models_match_the_migrations(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if _diff_table(d)] == []


def test_money_columns_are_bigint(ledger: Ledger) -> None:
    columns = {
        (table, c["name"]): type(c["type"]).__name__
        for table in ("budgets", "reservations", "llm_calls", "compute_charges")
        for c in inspect(ledger.engine).get_columns(table)
    }
    money = [k for k in columns if k[1].endswith("_micros") and "per_cpu" not in k[1]]
    assert len(money) == 8
    assert {columns[k] for k in money} == {"BIGINT"}


def test_sql_rules_agree_with_core(ledger: Ledger) -> None:
    """The thresholds and periods the SQL functions apply are core.budget's."""
    with ledger.engine.connect() as conn:
        for limit in (0, 1, 3, 1000, 10**12):
            for spent in {0, 1, limit // 2, limit * 3 // 4, limit * 9 // 10, limit, limit + 1}:
                mask = conn.execute(
                    text("SELECT wflo_reached_mask(:l, :s)"), {"l": limit, "s": spent}
                ).scalar()
                assert mask == thresholds_mask(reached_thresholds(limit, spent)), (limit, spent)
        now = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
        for period in ("none", "day", "month"):
            value = conn.execute(
                text("SELECT wflo_period_start(:p, :n)"), {"p": period, "n": now}
            ).scalar()
            assert value == period_start(period, now)


# -- reserve, settle, release ----------------------------------------------------------------------
def test_reserve_settle_records_call_cost_and_events(ledger: Ledger, budgets: BudgetLedger) -> None:
    session_id, step_id = start_step(ledger)
    budgets.set_budget("notebook", session_id, 500_000)
    reservation = budgets.reserve(
        [("notebook", session_id)], 60_000, call_label=LABEL, step_id=step_id, call_id="c1"
    )
    assert budgets.state("notebook", session_id).reserved_micros == 60_000
    assert reservation.budgets[0].reserved_micros == 60_000
    call = LlmCall(
        "openai",
        "gpt-4o-mini",
        "/v1/chat/completions",
        Usage(input=200, cache_read=1000, output=300, reasoning=100),
        latency_ms=420,
        request_hash="ab" * 32,
    )
    settlement = budgets.settle(reservation, 285, call=call)
    assert settlement.released_micros == 60_000 - 285
    state = budgets.state("notebook", session_id)
    assert (state.spent_micros, state.reserved_micros) == (285, 0)
    step = ledger.step(step_id)
    assert step is not None
    assert step.cost_micros == 285
    with ledger.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM llm_calls")).one()
    assert (row.step_id, row.reservation_id, row.cost_micros) == (step_id, reservation.id, 285)
    assert (row.input_tokens, row.cache_read_tokens, row.output_tokens) == (200, 1000, 300)
    assert (row.reasoning_tokens, row.latency_ms, row.cached) == (100, 420, False)
    [llm_event] = _events(ledger, "llm.call")
    assert llm_event["cost_micros"] == 285
    assert llm_event["step_id"] == step_id
    updates = [e["op"] for e in _events(ledger, "budget.updated")]
    assert updates == ["set", "reserve", "settle"]
    topics = _scalar(ledger, "SELECT string_agg(DISTINCT topic, ',' ORDER BY topic) FROM outbox")
    assert topics == "wflo.audit,wflo.costs,wflo.steps"  # set: audit; reserve, settle: costs
    # settling again (a retried activity) changes nothing
    again = budgets.settle(reservation, 999, call=call)
    assert again.already_settled
    assert again.actual_micros == 285
    assert budgets.state("notebook", session_id).spent_micros == 285


def test_release_frees_everything(budgets: BudgetLedger) -> None:
    budgets.set_budget("team", "ml", 100)
    reservation = budgets.reserve([("team", "ml")], 100)
    with pytest.raises(BudgetExceeded):
        budgets.reserve([("team", "ml")], 1)
    assert budgets.release(reservation) is True
    assert budgets.release(reservation) is False
    state = budgets.state("team", "ml")
    assert (state.spent_micros, state.reserved_micros) == (0, 0)
    budgets.reserve([("team", "ml")], 100)
    with pytest.raises(ReservationNotFound):
        budgets.settle(str(uuid.uuid4()), 1)


def test_refusal_message_and_nothing_moves(ledger: Ledger, budgets: BudgetLedger) -> None:
    budgets.set_budget("notebook", "nb", 500_000)
    spent = budgets.reserve([("notebook", "nb")], 410_000)
    budgets.settle(spent, 410_000)
    budgets.reserve([("notebook", "nb")], 50_000)
    reservations = _scalar(ledger, "SELECT count(*) FROM reservations")
    with pytest.raises(BudgetExceeded) as info:
        budgets.reserve([("notebook", "nb")], 60_000, call_label=LABEL)
    assert f"BudgetExceeded: {info.value}" == (
        "BudgetExceeded: notebook budget $0.50 — spent $0.41, reserved $0.05, "
        "this call needs up to $0.06 (gpt-4o-mini, max_tokens=800)"
    )
    assert (info.value.limit_micros, info.value.needed_micros) == (500_000, 60_000)
    state = budgets.state("notebook", "nb")
    assert (state.spent_micros, state.reserved_micros) == (410_000, 50_000)
    assert _scalar(ledger, "SELECT count(*) FROM reservations") == reservations
    budgets.reserve([("notebook", "nb")], 40_000)  # exactly to the limit still fits


def test_enclosing_budgets_are_all_charged_or_none(budgets: BudgetLedger) -> None:
    budgets.set_budget("team", "research", 1_000_000)
    budgets.set_budget("notebook", "nb", 300_000)
    budgets.set_budget("cell", "step-1", 100_000)
    scopes = [("cell", "step-1"), ("notebook", "nb"), ("team", "research")]
    reservation = budgets.reserve(scopes, 80_000)
    assert [b.reserved_micros for b in reservation.budgets] == [80_000] * 3
    # the cell has 20_000 left: a 30_000 call is refused by the cell, and neither the
    # notebook nor the team (updated before it, by id) keeps anything of it
    with pytest.raises(BudgetExceeded) as info:
        budgets.reserve(scopes, 30_000, call_label="m")
    assert info.value.scope == BudgetScope("cell", "step-1")
    for kind, key in scopes:
        assert budgets.state(kind, key).reserved_micros == 80_000
    budgets.settle(reservation, 50_000)
    for kind, key in scopes:
        state = budgets.state(kind, key)
        assert (state.spent_micros, state.reserved_micros) == (50_000, 0)
    # a tight team refuses a call every narrower budget would allow
    budgets.set_budget("team", "research", 60_000)
    with pytest.raises(BudgetExceeded) as info:
        budgets.reserve(scopes, 20_000)
    assert info.value.scope == BudgetScope("team", "research")
    assert "team research budget $0.06 — spent $0.05" in str(info.value)
    with pytest.raises(BudgetNotFound):
        budgets.reserve([("cell", "step-1"), ("team", "nobody")], 1)
    assert budgets.state("cell", "step-1").reserved_micros == 0


def test_thresholds_are_announced_once(ledger: Ledger, budgets: BudgetLedger) -> None:
    budgets.set_budget("team", "t", 1_000)
    crossed: list[int] = []
    for actual in (400, 100, 300, 150, 50, 200):  # 40% 50% 80% 95% 100% 120%
        reservation = budgets.reserve([("team", "t")], 0)
        settlement = budgets.settle(reservation, actual)
        crossed.extend(t.threshold for t in settlement.thresholds)
    assert crossed == [50, 75, 90, 100]
    events = _events(ledger, "budget.threshold")
    assert [e["threshold"] for e in events] == [50, 75, 90, 100]
    assert events[1]["spent_micros"] == 800
    assert budgets.state("team", "t").thresholds_emitted == (50, 75, 90, 100)
    # raising the limit re-arms what is no longer reached; lowering announces at once
    budgets.set_budget("team", "t", 10_000)
    assert budgets.state("team", "t").thresholds_emitted == ()
    budgets.set_budget("team", "t", 2_000)
    assert [e["threshold"] for e in _events(ledger, "budget.threshold")][4:] == [50]


def test_budgets_above_92_billion_dollars_settle_release_and_expire(
    budgets: BudgetLedger,
) -> None:
    """Until migration 0006 the threshold arithmetic overflowed ``bigint`` past a limit of
    92,233,720,368,547,758 micro-dollars: such a budget's reservations could not finish,
    and once one's lease ended every reserve's lease expiry failed too."""
    limit = 2**63 - 1
    budgets.set_budget("team", "huge", limit)
    settled = budgets.settle(budgets.reserve([("team", "huge")], 10), limit // 2 + 1)
    assert [t.threshold for t in settled.thresholds] == [50]
    assert budgets.release(budgets.reserve([("team", "huge")], 10))
    budgets.reserve([("team", "huge")], 10, lease_s=0.001)
    budgets.set_budget("notebook", "small", 100)
    time.sleep(0.05)
    assert budgets.expire_leases() == 1
    budgets.reserve([("notebook", "small")], 1)
    assert budgets.state("team", "huge").reserved_micros == 0


def test_watch_sees_every_money_move_from_another_connection(
    fresh_database_url: str, ledger: Ledger, budgets: BudgetLedger
) -> None:
    budgets.set_budget("team", "live", 1_000_000)
    other_kernel = BudgetLedger(create_engine(ledger.engine.url))
    seen: list[tuple[int, int]] = []
    ready = threading.Event()

    def listen() -> None:
        feed = other_kernel.watch("team", "live", timeout=5)
        first = next(feed)
        seen.append((first.spent_micros, first.reserved_micros))
        ready.set()
        for state in feed:
            seen.append((state.spent_micros, state.reserved_micros))
            if len(seen) == 4:
                break
        feed.close()

    thread = threading.Thread(target=listen)
    thread.start()
    assert ready.wait(10)
    budgets.set_budget("team", "other", 5)  # another budget: not this feed
    reservation = budgets.reserve([("team", "live")], 7_000)
    budgets.settle(reservation, 1_234)
    budgets.release(budgets.reserve([("team", "live")], 10))
    thread.join(10)
    other_kernel.close()
    assert seen == [(0, 0), (0, 7_000), (1_234, 0), (1_234, 10)]


def test_expired_leases_free_themselves(ledger: Ledger, budgets: BudgetLedger) -> None:
    budgets.set_budget("team", "crash", 1_000)
    lost = budgets.reserve([("team", "crash")], 900, lease_s=0.3)
    with pytest.raises(BudgetExceeded):
        budgets.reserve([("team", "crash")], 200, lease_s=60)
    wait_until(
        lambda: _lease_over(ledger, lost.id), 10, what="the 0.3 s lease to end (database clock)"
    )
    # the next reservation notices the expired lease, frees it and then fits
    kept = budgets.reserve([("team", "crash")], 200, lease_s=60)
    assert budgets.state("team", "crash").reserved_micros == 200
    state = _scalar(ledger, "SELECT state FROM reservations WHERE id = :i", i=lost.id)
    assert state == "expired"
    assert [e["op"] for e in _events(ledger, "budget.updated")][-2:] == ["expire", "reserve"]
    # a call that returns after its lease expired is still paid for
    late = budgets.settle(lost, 300)
    assert late.late
    assert late.released_micros == 0
    final = budgets.state("team", "crash")
    assert (final.spent_micros, final.reserved_micros) == (300, 200)
    # expire_leases with an explicit clock (a later one) frees the rest
    assert budgets.expire_leases(datetime.now(UTC) + timedelta(hours=1)) == 1
    assert budgets.state("team", "crash").reserved_micros == 0
    assert budgets.settle(kept, 10).late


def test_extend_lease(ledger: Ledger, budgets: BudgetLedger) -> None:
    budgets.set_budget("team", "long", 100)
    reservation = budgets.reserve([("team", "long")], 100, lease_s=0.3)
    assert budgets.extend_lease(reservation, 60)
    wait_until(  # the lease it was given at first is over by now
        lambda: _scalar(ledger, "SELECT now() > :t", t=reservation.lease_expires_at),
        10,
        what="the first 0.3 s lease to end (database clock)",
    )
    assert budgets.expire_leases() == 0
    assert budgets.state("team", "long").reserved_micros == 100


def test_day_and_month_periods_reset(ledger: Ledger, budgets: BudgetLedger) -> None:
    budgets.set_budget("team", "daily", 1_000, period="day")
    budgets.set_budget("team", "monthly", 1_000, period="month")
    for name in ("daily", "monthly"):
        budgets.settle(budgets.reserve([("team", name)], 900), 900)
        with pytest.raises(BudgetExceeded):
            budgets.reserve([("team", name)], 200)
    held = budgets.reserve([("team", "daily")], 50)
    # travel: the stored periods began a day / a month ago
    with ledger.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE budgets SET period_start = period_start - CASE period "
                "WHEN 'day' THEN interval '1 day' ELSE interval '1 month' END"
            )
        )
    for name in ("daily", "monthly"):
        state = budgets.state("team", name)
        assert state.spent_micros == 0  # read as reset before any write
        assert state.period_start == period_start(state.period, datetime.now(UTC))
    budgets.reserve([("team", "daily")], 200)
    daily = budgets.state("team", "daily")
    assert (daily.spent_micros, daily.reserved_micros) == (0, 250)  # reserved money carries over
    assert daily.thresholds_emitted == ()
    budgets.settle(held, 600)  # the new period's thresholds are announced afresh
    assert [e["threshold"] for e in _events(ledger, "budget.threshold")][-1:] == [50]
    settled = budgets.settle(budgets.reserve([("team", "monthly")], 10), 10)
    assert settled.budgets[0].spent_micros == 10


def test_compute_is_charged_against_the_same_budgets(ledger: Ledger, budgets: BudgetLedger) -> None:
    session_id, step_id = start_step(ledger)
    budgets.set_budget("cell", step_id, 1_000)
    budgets.set_budget("notebook", session_id, 10_000)
    scopes = [("cell", step_id), ("notebook", session_id)]
    # 12.5 CPU-s x 40 micro-$ = 500
    settlement = budgets.charge_compute(step_id, 12.5, 40, scopes=scopes)
    assert settlement.actual_micros == 500
    assert [b.spent_micros for b in settlement.budgets] == [500, 500]
    step = ledger.step(step_id)
    assert step is not None
    assert step.cost_micros == 500
    # with a compute reservation made when the step opened: settled at the real cost
    reservation = budgets.reserve(scopes, 400, step_id=step_id)
    budgets.charge_compute(step_id, 1.1, 3, reservation=reservation)  # 3.3 -> 4
    assert budgets.state("cell", step_id).spent_micros == 504
    assert budgets.state("cell", step_id).reserved_micros == 0
    # default price 0: recorded, free
    assert budgets.charge_compute(step_id, 99, scopes=scopes).actual_micros == 0
    rows = _scalar(ledger, "SELECT count(*) FROM compute_charges WHERE step_id = :s", s=step_id)
    assert rows == 3
    step = ledger.step(step_id)
    assert step is not None
    assert step.cost_micros == 504
    # past the limit: compute already used is recorded, and later calls are refused
    budgets.charge_compute(step_id, 10, 100, scopes=scopes)
    with pytest.raises(BudgetExceeded):
        budgets.reserve(scopes, 0)
    with pytest.raises(BudgetNotFound):
        budgets.charge_compute(step_id, 1, 1, scopes=[("team", "ghost")])


def test_cached_calls_cost_nothing_and_record_savings(
    ledger: Ledger, budgets: BudgetLedger
) -> None:
    _, step_id = start_step(ledger)
    call = LlmCall("openai", "gpt-4o-mini", "/v1/chat/completions", Usage(input=5, output=5))
    cached = dataclasses.replace(call, saved_micros=285, cached=True)
    budgets.record_cached_call(step_id, cached)
    with ledger.engine.connect() as conn:
        row = conn.execute(text("SELECT cost_micros, saved_micros, cached FROM llm_calls")).one()
    assert tuple(row) == (0, 285, True)
    assert _events(ledger, "llm.call")[0]["saved_micros"] == 285


# -- concurrency acceptance ---------------------------------------------------------------------
TEAM_LIMIT = 3_000_000
PER_PROCESS = 200


def _hammer(url: str, seed: int, results: Any, hold_after: int | None, lease_s: float) -> None:
    """One kernel: PER_PROCESS reservations of random sizes, settled (or released)."""
    ledger = BudgetLedger(create_engine(url, pool_size=1, max_overflow=0))
    rng = random.Random(seed)
    reserved = refused = released = settled_micros = 0
    results.put(("started", seed))
    try:
        for i in range(PER_PROCESS):
            amount = rng.randint(1_000, 20_000)
            try:
                reservation = ledger.reserve(
                    [("team", "shared")], amount, lease_s=lease_s, call_label=f"kernel {seed}"
                )
            except BudgetExceeded:
                refused += 1
                continue
            reserved += 1
            if hold_after is not None and i >= hold_after:
                results.put(("holding", seed, reservation.id))
                time.sleep(3600)  # "in the provider call" when the kernel is killed
            if rng.random() < 0.1:
                ledger.release(reservation)
                released += 1
            else:
                actual = rng.randint(0, amount)
                ledger.settle(reservation, actual)
                settled_micros += actual
        results.put(("done", seed, reserved, refused, released, settled_micros))
    except BaseException as exc:
        results.put(("error", seed, f"{type(exc).__name__}: {exc}"))
        raise


def _activity(url: str) -> list[tuple[Any, ...]]:
    """What every backend of the test database is doing (for a hang's failure message)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid, state, wait_event_type, wait_event, left(query, 80) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            ).all()
        return [tuple(r) for r in rows]
    finally:
        engine.dispose()


def _totals(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT b.limit_micros, b.spent_micros, b.reserved_micros, "
                "(SELECT coalesce(sum(actual_micros), 0) FROM reservations "
                " WHERE state = 'settled') AS settled, "
                "(SELECT count(*) FROM reservations WHERE state = 'held') AS held, "
                "(SELECT count(*) FROM reservations WHERE state = 'expired') AS expired, "
                "(SELECT count(*) FROM reservations) AS reservations "
                "FROM budgets b WHERE scope_kind = 'team' AND scope_key = 'shared'"
            )
        ).one()
    engine.dispose()
    return dict(row._mapping)


class _Outcomes:
    """One queue per kernel process: a process SIGKILLed while its queue's feeder holds
    the queue's write lock must not block the others (a shared queue would)."""

    def __init__(self, queues: list[Any]) -> None:
        self.queues = queues

    def get(self, timeout: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while True:
            for q in self.queues:
                try:
                    return tuple(q.get_nowait())
                except queue.Empty:
                    continue
            if time.monotonic() >= deadline:
                raise queue.Empty
            time.sleep(0.01)


def _start(url: str, plan: dict[int, int | None], lease_s: float) -> tuple[list[Any], _Outcomes]:
    spawn = multiprocessing.get_context("spawn")
    queues = [spawn.Queue() for _ in plan]
    processes = [
        spawn.Process(target=_hammer, args=(url, seed, q, hold, lease_s), daemon=True)
        for (seed, hold), q in zip(plan.items(), queues, strict=True)
    ]
    for process in processes:
        process.start()
    return processes, _Outcomes(queues)


def test_eight_processes_never_overspend(fresh_database_url: str) -> None:
    ledger = Ledger.connect(fresh_database_url)
    BudgetLedger(ledger.engine).set_budget("team", "shared", TEAM_LIMIT)
    started = time.monotonic()
    processes, results = _start(fresh_database_url, dict.fromkeys(range(8)), lease_s=60)
    outcomes = [o for o in (results.get(timeout=120) for _ in range(16)) if o[0] != "started"]
    for process in processes:
        process.join(timeout=30)
    elapsed = time.monotonic() - started
    errors = [o for o in outcomes if o[0] != "done"]
    assert errors == []
    reserved = sum(o[2] for o in outcomes)
    refused = sum(o[3] for o in outcomes)
    settled = sum(o[5] for o in outcomes)
    totals = _totals(fresh_database_url)
    ledger.close()
    assert reserved + refused == 8 * PER_PROCESS
    assert refused > 0, "the team budget should have filled up"
    assert totals["spent_micros"] == settled == totals["settled"]
    assert totals["spent_micros"] <= TEAM_LIMIT
    assert totals["reserved_micros"] == 0
    assert totals["held"] == 0
    assert totals["reservations"] == reserved
    print(f"\n8x{PER_PROCESS}: {reserved} reserved, {refused} refused, {elapsed:.1f} s")


def test_killed_kernels_reservations_expire(fresh_database_url: str) -> None:
    ledger = Ledger.connect(fresh_database_url)
    BudgetLedger(ledger.engine).set_budget("team", "shared", TEAM_LIMIT)
    lease_s = 2.0
    # kernel 0 is killed holding a reservation (in the middle of a call); kernel 1 at a
    # random moment of its run (maybe inside a statement); kernels 2-7 carry on
    plan: dict[int, int | None] = dict.fromkeys(range(8))
    plan[0] = 15
    processes, results = _start(fresh_database_url, plan, lease_s=lease_s)
    killed: dict[int, float] = {}
    done: dict[int, tuple[Any, ...]] = {}
    kill_1_at = float("inf")
    deadline = time.monotonic() + 150
    while len(killed) < 2 or not all(seed in done for seed in range(2, 8)):
        if time.monotonic() > deadline:
            pytest.fail(
                f"kernels still running after 150 s: killed={sorted(killed)}, "
                f"done={sorted(done)}; database activity: {_activity(fresh_database_url)}"
            )
        if 1 not in killed and time.monotonic() >= kill_1_at:
            os.kill(processes[1].pid or 0, signal.SIGKILL)
            killed[1] = time.monotonic()
        try:
            outcome = results.get(timeout=0.1)
        except queue.Empty:
            continue
        assert outcome[0] != "error", outcome
        if outcome[0] == "started":
            if outcome[1] == 1:  # its 200 reservations take seconds under contention
                kill_1_at = time.monotonic() + random.uniform(0.05, 0.5)
        elif outcome[0] == "holding":
            os.kill(processes[0].pid or 0, signal.SIGKILL)
            killed[0] = time.monotonic()
        else:
            assert outcome[1] not in (0, 1), f"kernel {outcome[1]} finished before its kill"
            done[outcome[1]] = outcome
    for process in processes:
        process.join(timeout=30)
    assert processes[0].exitcode == processes[1].exitcode == -signal.SIGKILL
    # after the lease, every reservation the dead kernels held is released: wait until no
    # statement is still running (kernel 1 may have been killed inside one, which its
    # backend then completes) and every lease still held has ended
    wait_until(
        lambda: not [a for a in _activity(fresh_database_url) if a[1] == "active"],
        30,
        interval=0.1,
        what="the killed kernels' statements to finish",
    )
    wait_until(
        lambda: (
            not _scalar(
                ledger,
                "SELECT count(*) FROM reservations "
                "WHERE state = 'held' AND lease_expires_at >= now()",
            )
        ),
        30,
        interval=0.1,
        what="the dead kernels' leases to end (database clock)",
    )
    BudgetLedger(ledger.engine).expire_leases()
    totals = _totals(fresh_database_url)
    ledger.close()
    assert totals["held"] == 0
    assert totals["reserved_micros"] == 0
    assert totals["expired"] >= 1  # at least kernel 0's
    assert totals["spent_micros"] == totals["settled"] <= TEAM_LIMIT
    survivors = sum(o[5] for seed, o in done.items() if seed >= 2)
    assert survivors <= totals["settled"]


def test_outbox_payloads_are_valid_events(ledger: Ledger, budgets: BudgetLedger) -> None:
    from wflo_jupyter.core.events import Event

    budgets.set_budget("team", "ev", 100)
    budgets.settle(budgets.reserve([("team", "ev")], 60), 60)
    with ledger.engine.connect() as conn:
        envelopes = conn.execute(text("SELECT envelope FROM outbox ORDER BY id")).scalars().all()
    for envelope in envelopes:
        event = Event.from_json(json.dumps(envelope).encode())
        assert event.payload["kind"] == "team"
    assert {e["type"] for e in envelopes} == {"budget.updated", "budget.threshold"}


def test_step_cost_report(ledger: Ledger, budgets: BudgetLedger) -> None:
    from wflo_jupyter.ledger.reports import as_dict, call_rows, model_costs, step_costs, totals

    session_id, first = start_step(ledger, name="load")
    _, second = start_step(ledger, session_id, name="summarise")
    budgets.set_budget("notebook", session_id, 1_000_000)
    scopes = [("notebook", session_id)]
    for usage, actual in (
        (Usage(input=200, cache_read=1000, output=300), 285),
        (Usage(output=5), 3),
    ):
        reservation = budgets.reserve(scopes, 10_000, step_id=second)
        call = LlmCall("openai", "gpt-4o-mini", "/v1/chat/completions", usage, latency_ms=7)
        budgets.settle(reservation, actual, call=call)
    cached = LlmCall("openai", "gpt-4o-mini", "/v1/chat/completions", saved_micros=285, cached=True)
    budgets.record_cached_call(second, cached)
    budgets.charge_compute(second, 2, 5, scopes=scopes)
    rows = step_costs(ledger.engine, session_ids=[session_id])
    assert [r.name for r in rows] == ["load", "summarise"]
    load, summarise = rows
    assert (load.calls, load.cost_micros) == (0, 0)
    assert (summarise.calls, summarise.cached_calls) == (3, 1)
    assert (summarise.input_tokens, summarise.cache_read_tokens, summarise.output_tokens) == (
        200,
        1000,
        305,
    )
    assert (summarise.llm_cost_micros, summarise.compute_cost_micros) == (288, 10)
    assert (summarise.cost_micros, summarise.saved_micros) == (298, 285)
    assert totals(rows)["cost_micros"] == 298
    assert as_dict(summarise)["cost_usd"] == "0.000298"
    assert [c.cost_micros for c in call_rows(ledger.engine, second)] == [285, 3, 0]
    [model] = model_costs(ledger.engine, session_ids=[session_id])
    assert (model.model, model.calls, model.cost_micros) == ("gpt-4o-mini", 3, 288)
    assert step_costs(ledger.engine, step_ids=[first])[0].step_id == first


# -- the hot connections (reserve / settle / release) -------------------------------------------
def test_a_killed_idle_connection_is_replaced_without_an_error(
    ledger: Ledger, budgets: BudgetLedger
) -> None:
    budgets.set_budget("notebook", "hot", 10_000)
    first = budgets.reserve([("notebook", "hot")], 10)
    with ledger.engine.begin() as conn:  # what a Postgres restart does to idle connections
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state = 'idle'"
            )
        ).scalar_one()
    assert killed >= 1
    second = budgets.reserve([("notebook", "hot")], 20)  # retried once on a fresh connection
    budgets.settle(first, 5)
    budgets.release(second)
    state = budgets.state("notebook", "hot")
    assert (state.spent_micros, state.reserved_micros) == (5, 0)


@pytest.mark.parametrize(
    "key",
    ['team "quoted" \\ back,slash', "{braces},comma", "NULL", " ", "café ☕ notebook.ipynb"],
)
def test_keys_that_need_quoting_reach_their_own_budget(budgets: BudgetLedger, key: str) -> None:
    """The reservation's scopes travel as text-array literals on the hot path: quotes,
    backslashes, braces, commas, the word NULL, a blank and non-ASCII keys each
    reserve against exactly their own budget."""
    budgets.set_budget("team", key, 1_000)
    budgets.set_budget("team", "a neighbour", 1_000)
    held = budgets.reserve([("team", key)], 300, call_label="quoting")
    assert held.budgets[0].scope == BudgetScope("team", key)
    assert budgets.state("team", key).reserved_micros == 300
    assert budgets.state("team", "a neighbour").reserved_micros == 0
    budgets.settle(held, 100)
    assert budgets.state("team", key).spent_micros == 100


def test_a_hot_statements_sql_error_is_one_line_and_the_connection_stays_usable(
    ledger: Ledger,
) -> None:
    from wflo_jupyter.ledger.hot import HotConnections, HotStatement, StatementFailed

    hot = HotConnections(ledger.engine, max_idle=1)
    try:
        divide = HotStatement(
            "wflo_test_divide",
            "SELECT 10 / $1::integer, $2::text, $1::integer < 0, "
            "timestamptz '2000-01-02 00:00:01.5+00', json_build_object('k', $2::text)",
            ("int", "text", "bool", "timestamptz", "json"),
        )
        when = datetime(2000, 1, 2, 0, 0, 1, 500_000, tzinfo=UTC)
        assert hot.run_prepared(divide, ["-5", "é"]) == [(-2, "é", True, when, {"k": "é"})]
        with pytest.raises(StatementFailed, match=r"^PostgreSQL: division by zero") as caught:
            hot.run_prepared(divide, ["0", "x"])
        assert caught.value.sqlstate == "22012"
        assert "\n" not in str(caught.value)
        assert hot.run_prepared(divide, [None, None])[0][:3] == (None, None, None)  # NULLs
        assert hot.run_prepared(divide, ["1", "x"])[0][:3] == (10, "x", False)
        with pytest.raises(ValueError, match="no binary decoder"):
            HotStatement("wflo_test_bad", "SELECT 1", ("numeric",))
    finally:
        hot.close()


def test_an_unreachable_database_is_one_engine_unavailable_line(fresh_database_url: str) -> None:
    from sqlalchemy.engine import make_url

    from wflo_jupyter.core.errors import EngineUnavailable

    ledger = Ledger.connect(fresh_database_url)
    ledger.close()
    nowhere = make_url(fresh_database_url).set(host="127.0.0.1", port=1, query={})
    budgets = BudgetLedger(create_engine(nowhere))
    try:
        with pytest.raises(EngineUnavailable, match=r"^PostgreSQL: ") as caught:
            budgets.reserve([("notebook", "x")], 1)
        assert "\n" not in str(caught.value)
    finally:
        budgets.close()
