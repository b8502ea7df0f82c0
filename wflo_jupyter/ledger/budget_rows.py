"""Budget rows and payloads to and from ``BudgetState``: the columns read from
``budgets``, a row read with its day/month period rolled over (``BudgetRow``), and the
JSON payload of ``budget.updated`` events and ``pg_notify`` messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from wflo_jupyter.core.budget import (
    BudgetScope,
    BudgetState,
    Period,
    check_period,
    needs_reset,
    period_start,
    thresholds_from_mask,
)

__all__ = [
    "BUDGET_COLUMNS",
    "BudgetRow",
    "scope_payload",
    "state_from_payload",
    "state_from_row",
]

BUDGET_COLUMNS = (
    "id, scope_kind, scope_key, limit_micros, spent_micros, reserved_micros, period, "
    "period_start, thresholds_emitted"
)


def scope_payload(state: BudgetState) -> dict[str, Any]:
    """Python twin of ``wflo_budget_event``'s payload (for ``set_budget``)."""
    return {
        "kind": state.scope.kind,
        "key": state.scope.key,
        "name": state.scope.name,
        "limit_micros": state.limit_micros,
        "spent_micros": state.spent_micros,
        "reserved_micros": state.reserved_micros,
        "period": state.period,
        "period_start": state.period_start.isoformat() if state.period_start else None,
        "thresholds_emitted": list(state.thresholds_emitted),
    }


def state_from_payload(payload: Mapping[str, Any]) -> BudgetState:
    start = payload.get("period_start")
    return BudgetState(
        scope=BudgetScope(payload["kind"], payload["key"]),
        limit_micros=int(payload["limit_micros"]),
        spent_micros=int(payload["spent_micros"]),
        reserved_micros=int(payload["reserved_micros"]),
        period=check_period(payload.get("period", "none")),
        period_start=datetime.fromisoformat(start) if start else None,
        thresholds_emitted=tuple(int(t) for t in payload.get("thresholds_emitted", ())),
    )


def state_from_row(row: Row[Any], spent: int, mask: int, pstart: datetime | None) -> BudgetState:
    return BudgetState(
        scope=BudgetScope(row.scope_kind, row.scope_key),
        limit_micros=int(row.limit_micros),
        spent_micros=spent,
        reserved_micros=int(row.reserved_micros),
        period=check_period(row.period),
        period_start=pstart,
        thresholds_emitted=thresholds_from_mask(mask),
    )


@dataclass
class BudgetRow:
    """A budget row read (and locked) by one of the less frequent Python-side operations."""

    id: int
    scope: BudgetScope
    limit: int
    spent: int
    reserved: int
    period: Period
    period_start: datetime | None
    mask: int

    @classmethod
    def from_row(cls, row: Row[Any], now: datetime) -> BudgetRow:
        """The row as it stands at ``now``: a period that rolled over reads as reset."""
        budget = cls(
            id=int(row.id),
            scope=BudgetScope(row.scope_kind, row.scope_key),
            limit=int(row.limit_micros),
            spent=int(row.spent_micros),
            reserved=int(row.reserved_micros),
            period=check_period(row.period),
            period_start=row.period_start,
            mask=int(row.thresholds_emitted),
        )
        if needs_reset(budget.period, budget.period_start, now):
            budget.spent, budget.mask = 0, 0
            budget.period_start = period_start(budget.period, now)
        return budget

    def state(self) -> BudgetState:
        return BudgetState(
            scope=self.scope,
            limit_micros=self.limit,
            spent_micros=self.spent,
            reserved_micros=self.reserved,
            period=self.period,
            period_start=self.period_start,
            thresholds_emitted=thresholds_from_mask(self.mask),
        )
