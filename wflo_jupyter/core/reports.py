"""Value types the session hands to the notebook and the command line: a step's summary,
a step's cost row, the LLM cache's statistics, and one output event of a running step.

Plain frozen dataclasses (no ORM rows, no engine clients), so the notebook layer shows
them without knowing where they came from. Money is integer micro-dollars.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wflo_jupyter.core.budget import BudgetState

OutputEvent = tuple[str, Any, Any]
"""``("stream", name, text) | ("display", data, metadata) | ("notice", text, None)``."""


@dataclass(frozen=True)
class StepSummary:
    """One ``%%wflo`` step as ``%wflo runs`` lists it."""

    step_id: str
    seq: int
    name: str
    status: str
    exit_reason: str | None
    duration_ms: int | None
    cost_micros: int
    workflow_id: str | None


@dataclass(frozen=True)
class StepCostRow:
    """One ``%%wflo`` step and what it cost."""

    step_id: str
    session_id: str
    seq: int
    name: str
    status: str
    started_at: datetime | None
    duration_ms: int | None
    sandbox_ms: int | None
    calls: int
    cached_calls: int
    simulated_calls: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    llm_cost_micros: int
    compute_cost_micros: int
    cost_micros: int  # the step's total as settled (LLM + compute)
    saved_micros: int  # what cache hits would have cost


@dataclass(frozen=True)
class CacheStats:
    """Counts for one namespace (or all of them). ``entries`` are live keys now;
    ``hits``/``misses``/``saved_micros`` accumulate until ``reset_stats``."""

    hits: int
    misses: int
    saved_micros: int
    entries: int


@dataclass(frozen=True)
class CacheReport:
    """``%wflo cache stats``: the counts (every kernel's), whether Redis answers, and
    this kernel's hits answered from its near cache (None when it has none)."""

    stats: CacheStats
    available: bool
    from_memory: int | None


@dataclass(frozen=True)
class CallSummary:
    """One LLM call as the budget meter lists it."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    saved_micros: int
    cached: bool
    simulated: bool


@dataclass(frozen=True)
class MeterSnapshot:
    """What the budget meter shows: every enclosing budget, this (or the last) cell's
    cost and cache savings, and the latest calls, newest first."""

    budgets: tuple[BudgetState, ...]
    cell_name: str | None
    cell_cost_micros: int
    cell_saved_micros: int
    calls: tuple[CallSummary, ...]
