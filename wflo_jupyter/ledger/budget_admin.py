"""Budget administration: creating and changing a scope's budget (cell, notebook or team:
limit and period), deleting it, and reading budgets as they stand.

A changed limit re-arms the thresholds it no longer reaches and announces the ones it now
passes; a changed period starts a new period at once (what was spent stays counted in
it). Reads see a day/month budget whose period rolled over as reset (spent and emitted
thresholds at zero; reserved money stays held); the row itself is reset lazily by the
next money move (``wflo_reserve`` / ``wflo_finish``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Result, text

from wflo_jupyter.core.budget import (
    BudgetNotFound,
    BudgetScope,
    BudgetState,
    check_limit,
    check_period,
    crossed_thresholds,
    period_start,
    rearm_thresholds,
    thresholds_mask,
)
from wflo_jupyter.core.events import BUDGET_THRESHOLD, BUDGET_UPDATED, Event
from wflo_jupyter.ledger.budget_rows import BUDGET_COLUMNS, BudgetRow, scope_payload
from wflo_jupyter.ledger.feed import NOTIFY_CHANNEL

__all__ = ["BudgetAdmin"]


class BudgetAdmin:
    """Set, delete and read budgets on one engine (thread-safe)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def set_budget(
        self, kind: str, key: str, limit_micros: int, period: str = "none"
    ) -> BudgetState:
        """See ``BudgetLedger.set_budget``."""
        scope = BudgetScope(kind, key)  # type: ignore[arg-type]
        limit = check_limit(limit_micros)
        checked_period = check_period(period)
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO budgets (scope_kind, scope_key, limit_micros, period) "
                    "VALUES (:kind, :key, :limit, :period) "
                    "ON CONFLICT (scope_kind, scope_key) DO NOTHING"
                ),
                {"kind": scope.kind, "key": scope.key, "limit": limit, "period": checked_period},
            )
            row = _select_budget(conn, scope, lock=True).one()
            budget = BudgetRow.from_row(row, row.now)
            if budget.period != checked_period:
                # a new period starts now; what was spent stays counted in it
                budget.period = checked_period
                budget.period_start = period_start(checked_period, row.now)
            budget.limit = limit
            budget.mask = rearm_thresholds(limit, budget.spent, budget.mask)
            events: list[Event] = []
            new = crossed_thresholds(limit, budget.spent, budget.spent, budget.mask)
            budget.mask |= thresholds_mask(new)
            for threshold in new:
                events.append(
                    Event(
                        BUDGET_THRESHOLD,
                        key=str(scope),
                        payload={**scope_payload(budget.state()), "threshold": threshold},
                    )
                )
            update = {**scope_payload(budget.state()), "op": "set"}
            events.append(Event(BUDGET_UPDATED, key=str(scope), payload=update))
            conn.execute(
                text(
                    "UPDATE budgets SET limit_micros = :limit, period = :period, "
                    "period_start = :pstart, spent_micros = :spent, "
                    "thresholds_emitted = :mask, updated_at = now() WHERE id = :id"
                ),
                {
                    "limit": limit,
                    "period": budget.period,
                    "pstart": budget.period_start,
                    "spent": budget.spent,
                    "mask": budget.mask,
                    "id": budget.id,
                },
            )
            _write_events(conn, events, [update])
            return budget.state()

    def delete_budget(self, kind: str, key: str) -> bool:
        """See ``BudgetLedger.delete_budget``."""
        with self.engine.begin() as conn:
            result = conn.execute(
                text("DELETE FROM budgets WHERE scope_kind = :kind AND scope_key = :key"),
                {"kind": kind, "key": key},
            )
            return bool(result.rowcount)

    def state(self, kind: str, key: str) -> BudgetState:
        """See ``BudgetLedger.state``."""
        scope = BudgetScope(kind, key)  # type: ignore[arg-type]
        with self.engine.connect() as conn:
            row = _select_budget(conn, scope, lock=False).one_or_none()
        if row is None:
            raise BudgetNotFound(scope)
        return BudgetRow.from_row(row, row.now).state()

    def budgets(self, kind: str | None = None) -> list[BudgetState]:
        """See ``BudgetLedger.budgets``."""
        query = f"SELECT {BUDGET_COLUMNS}, now() AS now FROM budgets"
        params: dict[str, Any] = {}
        if kind is not None:
            query += " WHERE scope_kind = :kind"
            params["kind"] = kind
        with self.engine.connect() as conn:
            rows = conn.execute(text(query + " ORDER BY scope_kind, scope_key"), params).all()
        return [BudgetRow.from_row(row, row.now).state() for row in rows]


def _select_budget(conn: Connection, scope: BudgetScope, *, lock: bool) -> Result[Any]:
    """The budget row of ``scope`` with the database clock (``now``); ``lock``: for an
    update by the same transaction."""
    locking = " FOR NO KEY UPDATE" if lock else ""
    return conn.execute(
        text(
            f"SELECT {BUDGET_COLUMNS}, now() AS now FROM budgets "
            f"WHERE scope_kind = :kind AND scope_key = :key{locking}"
        ),
        {"kind": scope.kind, "key": scope.key},
    )


def _write_events(
    conn: Connection, events: Sequence[Event], notes: Sequence[Mapping[str, Any]]
) -> None:
    """``events`` into the outbox and ``notes`` to the live feed, in one statement."""
    conn.execute(
        text(
            """
            WITH events AS (
                INSERT INTO outbox (event_id, event_type, topic, key, envelope)
                SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:types AS text[]),
                                     CAST(:topics AS text[]), CAST(:keys AS text[]),
                                     CAST(:envelopes AS jsonb[]))
            )
            SELECT pg_notify(:channel, n) FROM unnest(CAST(:notes AS text[])) AS n
            """
        ),
        {
            "ids": [e.id for e in events],
            "types": [e.type for e in events],
            "topics": [e.topic for e in events],
            "keys": [e.key for e in events],
            "envelopes": [e.to_json().decode() for e in events],
            "notes": [json.dumps(n, separators=(",", ":")) for n in notes],
            "channel": NOTIFY_CHANNEL,
        },
    )
