"""The JSON the server extension answers with: budgets and steps as plain dicts, every
amount twice, as integer micro-dollars (``*_micros``, exact) and as a USD string
(``*_usd``, for display: ``$0.50``, ``$0.000123``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.core.money import format_usd
from wflo_jupyter.core.steps import workflow_link
from wflo_jupyter.ledger.notebooks import NotebookStep


def _money(name: str, micros: int) -> dict[str, Any]:
    return {f"{name}_micros": micros, f"{name}_usd": format_usd(micros)}


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def budget_json(state: BudgetState) -> dict[str, Any]:
    """One budget: its scope, limit / spent / reserved / available, period."""
    return {
        "kind": state.scope.kind,
        "key": state.scope.key,
        "name": state.scope.name,
        **_money("limit", state.limit_micros),
        **_money("spent", state.spent_micros),
        **_money("reserved", state.reserved_micros),
        **_money("available", state.available_micros),
        "period": state.period,
        "period_start": _when(state.period_start),
        "thresholds_emitted": list(state.thresholds_emitted),
    }


def step_json(step: NotebookStep, ui: str | None, namespace: str) -> dict[str, Any]:
    """One step: identity, status, money, cache use, timing and its workflow."""
    return {
        "id": step.step_id,
        "session_id": step.session_id,
        "seq": step.seq,
        "name": step.name,
        "status": step.status,
        "exit_reason": step.exit_reason,
        **_money("cost", step.cost_micros),
        "calls": step.calls,
        "cached_calls": step.cached_calls,
        **_money("saved", step.saved_micros),
        "started_at": _when(step.started_at),
        "ended_at": _when(step.finished_at),
        "duration_ms": step.duration_ms,
        "workflow_id": step.workflow_id,
        "temporal_url": workflow_link(ui, namespace, step.workflow_id),
    }
