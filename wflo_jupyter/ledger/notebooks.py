"""What the ledger holds about one notebook, read by its keys: its budgets, the team
budgets its steps were charged to, and its steps newest first with their costs.

A notebook is known by the ``notebook_path`` its kernels recorded in ``sessions`` (also
the key of its notebook budget). One notebook may have been recorded under more than one
spelling (a path relative to the server's root, or the absolute path jupyter_server gives
its kernels in ``JPY_SESSION_NAME``), so every read takes a list of keys. All SQL here
takes its values as bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.ledger.budget_rows import BUDGET_COLUMNS, BudgetRow
from wflo_jupyter.ledger.reports import step_costs

__all__ = [
    "NotebookStep",
    "notebook_budgets",
    "notebook_step_run",
    "notebook_steps",
    "notebook_teams",
]

# the team budgets that reservations of the notebook's steps held money against
_TEAM_IDS = """
    SELECT DISTINCT b.id FROM budgets AS b
    JOIN reservations AS r ON b.id = ANY(r.budget_ids)
    JOIN steps AS st ON st.id = r.step_id
    JOIN sessions AS se ON se.id = st.session_id
    WHERE b.scope_kind = 'team' AND se.notebook_path = ANY(CAST(:keys AS text[]))
"""


@dataclass(frozen=True)
class NotebookStep:
    """One step of a notebook's sessions, with what it cost and saved."""

    step_id: str
    session_id: str
    seq: int
    name: str
    status: str
    exit_reason: str | None
    cost_micros: int
    calls: int
    cached_calls: int
    saved_micros: int
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    workflow_id: str | None


def notebook_budgets(engine: Engine, keys: Sequence[str]) -> list[BudgetState]:
    """The notebook's budgets (one per key that has one) and every team budget its steps
    were charged to, as they stand (a rolled-over period reads as reset): notebook
    budgets first, then teams by name."""
    query = (
        f"SELECT {BUDGET_COLUMNS}, now() AS now FROM budgets "
        "WHERE (scope_kind = 'notebook' AND scope_key = ANY(CAST(:keys AS text[]))) "
        f"OR id IN ({_TEAM_IDS}) "
        "ORDER BY scope_kind <> 'notebook', scope_key"
    )
    with engine.connect() as conn:
        rows = conn.execute(text(query), {"keys": list(keys)}).all()
    return [BudgetRow.from_row(row, row.now).state() for row in rows]


def notebook_teams(engine: Engine, keys: Sequence[str]) -> set[str]:
    """Names of the team budgets the notebook's steps were charged to."""
    query = f"SELECT scope_key FROM budgets WHERE id IN ({_TEAM_IDS})"
    with engine.connect() as conn:
        return {str(k) for k in conn.execute(text(query), {"keys": list(keys)}).scalars()}


def notebook_steps(engine: Engine, keys: Sequence[str], limit: int) -> list[NotebookStep]:
    """The newest ``limit`` steps of the notebook's sessions, newest first."""
    query = """
        SELECT st.id, st.exit_reason, st.started_at, st.finished_at, st.workflow_id
        FROM steps AS st JOIN sessions AS se ON se.id = st.session_id
        WHERE se.notebook_path = ANY(CAST(:keys AS text[]))
        ORDER BY st.started_at DESC, st.seq DESC
        LIMIT :limit
    """
    with engine.connect() as conn:
        rows = conn.execute(text(query), {"keys": list(keys), "limit": limit}).all()
    if not rows:
        return []
    costs = {c.step_id: c for c in step_costs(engine, step_ids=[r.id for r in rows])}
    steps: list[NotebookStep] = []
    for row in rows:
        cost = costs.get(row.id)
        if cost is None:  # deleted between the two reads
            continue
        steps.append(
            NotebookStep(
                step_id=row.id,
                session_id=cost.session_id,
                seq=cost.seq,
                name=cost.name,
                status=cost.status,
                exit_reason=row.exit_reason,
                cost_micros=cost.cost_micros,
                calls=cost.calls,
                cached_calls=cost.cached_calls,
                saved_micros=cost.saved_micros,
                started_at=row.started_at,
                finished_at=row.finished_at,
                duration_ms=cost.duration_ms,
                workflow_id=row.workflow_id,
            )
        )
    return steps


def notebook_step_run(engine: Engine, keys: Sequence[str], step_id: str) -> tuple[str, str] | None:
    """``(status, workflow_id)`` of step ``step_id`` when one of the notebook's sessions
    ran it, else ``None`` (unknown, or another notebook's step)."""
    query = """
        SELECT st.status, st.workflow_id
        FROM steps AS st JOIN sessions AS se ON se.id = st.session_id
        WHERE st.id = :step_id AND se.notebook_path = ANY(CAST(:keys AS text[]))
    """
    with engine.connect() as conn:
        row = conn.execute(text(query), {"keys": list(keys), "step_id": step_id}).first()
    return (str(row.status), str(row.workflow_id or "")) if row is not None else None
