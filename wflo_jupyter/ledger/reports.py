"""Cost reports read from the ledger, as plain dataclasses.

Owns the report queries: per step (calls, tokens by kind, LLM and compute cost, cache
savings, duration), per call of a step, and per model. Callers turn the rows into a
pandas DataFrame, a chart, a rich table or CSV/JSON (``as_dict`` gives JSON-ready
values); nothing here imports them. Money stays integer micro-dollars; ``as_dict`` adds
exact dollar strings beside each amount.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from wflo_jupyter.core.money import micros_to_usd
from wflo_jupyter.core.reports import CallSummary, StepCostRow

__all__ = [
    "CallRow",
    "ModelCostRow",
    "StepCostRow",
    "as_dict",
    "call_rows",
    "model_costs",
    "recent_calls",
    "step_costs",
    "totals",
]


@dataclass(frozen=True)
class CallRow:
    """One LLM call of a step."""

    call_id: str
    step_id: str | None
    provider: str
    model: str
    endpoint: str
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micros: int
    saved_micros: int
    cached: bool
    simulated: bool
    latency_ms: int | None
    created_at: datetime


@dataclass(frozen=True)
class ModelCostRow:
    """Calls and cost per provider and model."""

    provider: str
    model: str
    calls: int
    cached_calls: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micros: int
    saved_micros: int


_TOKEN_SUMS = """
    count(*) AS calls,
    count(*) FILTER (WHERE cached) AS cached_calls,
    count(*) FILTER (WHERE simulated) AS simulated_calls,
    coalesce(sum(input_tokens), 0) AS input_tokens,
    coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
    coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    coalesce(sum(cost_micros), 0) AS cost_micros,
    coalesce(sum(saved_micros), 0) AS saved_micros
"""

_STEP_COSTS = f"""
    SELECT s.id AS step_id, s.session_id, s.seq, s.name, s.status, s.started_at,
           s.duration_ms, s.sandbox_ms, s.cost_micros,
           coalesce(c.calls, 0) AS calls, coalesce(c.cached_calls, 0) AS cached_calls,
           coalesce(c.simulated_calls, 0) AS simulated_calls,
           coalesce(c.input_tokens, 0) AS input_tokens,
           coalesce(c.cache_read_tokens, 0) AS cache_read_tokens,
           coalesce(c.cache_write_tokens, 0) AS cache_write_tokens,
           coalesce(c.output_tokens, 0) AS output_tokens,
           coalesce(c.reasoning_tokens, 0) AS reasoning_tokens,
           coalesce(c.cost_micros, 0) AS llm_cost_micros,
           coalesce(c.saved_micros, 0) AS saved_micros,
           coalesce(k.compute_micros, 0) AS compute_cost_micros
    FROM steps AS s
    LEFT JOIN (SELECT step_id, {_TOKEN_SUMS} FROM llm_calls GROUP BY step_id) AS c
           ON c.step_id = s.id
    LEFT JOIN (SELECT step_id, sum(cost_micros) AS compute_micros FROM compute_charges
               GROUP BY step_id) AS k
           ON k.step_id = s.id
"""


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def step_costs(
    engine: Engine,
    *,
    session_ids: Sequence[str] | None = None,
    step_ids: Sequence[str] | None = None,
    limit: int = 10_000,
) -> list[StepCostRow]:
    """Steps (of some sessions, or some steps) in execution order, with their costs."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if session_ids is not None:
        where.append("s.session_id = ANY(CAST(:sessions AS text[]))")
        params["sessions"] = list(session_ids)
    if step_ids is not None:
        where.append("s.id = ANY(CAST(:steps AS text[]))")
        params["steps"] = list(step_ids)
    query = _STEP_COSTS
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY s.started_at, s.session_id, s.seq LIMIT :limit"
    with engine.connect() as conn:
        rows = conn.execute(text(query), params).all()
    return [
        StepCostRow(
            step_id=r.step_id,
            session_id=r.session_id,
            seq=int(r.seq),
            name=r.name,
            status=r.status,
            started_at=r.started_at,
            duration_ms=r.duration_ms,
            sandbox_ms=r.sandbox_ms,
            calls=_int(r.calls),
            cached_calls=_int(r.cached_calls),
            simulated_calls=_int(r.simulated_calls),
            input_tokens=_int(r.input_tokens),
            cache_read_tokens=_int(r.cache_read_tokens),
            cache_write_tokens=_int(r.cache_write_tokens),
            output_tokens=_int(r.output_tokens),
            reasoning_tokens=_int(r.reasoning_tokens),
            llm_cost_micros=_int(r.llm_cost_micros),
            compute_cost_micros=_int(r.compute_cost_micros),
            cost_micros=_int(r.cost_micros),
            saved_micros=_int(r.saved_micros),
        )
        for r in rows
    ]


def call_rows(engine: Engine, step_id: str) -> list[CallRow]:
    """The LLM calls of one step, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id AS call_id, step_id, provider, model, endpoint, input_tokens, "
                "cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, "
                "cost_micros, saved_micros, cached, simulated, latency_ms, created_at "
                "FROM llm_calls WHERE step_id = :step ORDER BY created_at, id"
            ),
            {"step": step_id},
        ).all()
    return [CallRow(**r._asdict()) for r in rows]


def model_costs(engine: Engine, *, session_ids: Sequence[str] | None = None) -> list[ModelCostRow]:
    """Totals per provider and model, dearest first."""
    query = f"SELECT provider, model, {_TOKEN_SUMS} FROM llm_calls"
    params: dict[str, Any] = {}
    if session_ids is not None:
        query += (
            " WHERE step_id IN (SELECT id FROM steps"
            " WHERE session_id = ANY(CAST(:sessions AS text[])))"
        )
        params["sessions"] = list(session_ids)
    query += " GROUP BY provider, model ORDER BY cost_micros DESC, provider, model"
    with engine.connect() as conn:
        rows = conn.execute(text(query), params).all()
    return [
        ModelCostRow(
            provider=r.provider,
            model=r.model,
            calls=_int(r.calls),
            cached_calls=_int(r.cached_calls),
            input_tokens=_int(r.input_tokens),
            cache_read_tokens=_int(r.cache_read_tokens),
            cache_write_tokens=_int(r.cache_write_tokens),
            output_tokens=_int(r.output_tokens),
            reasoning_tokens=_int(r.reasoning_tokens),
            cost_micros=_int(r.cost_micros),
            saved_micros=_int(r.saved_micros),
        )
        for r in rows
    ]


def totals(rows: Iterable[StepCostRow]) -> dict[str, int]:
    """Column sums of a step report (the footer of a table)."""
    keys = (
        "calls",
        "cached_calls",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "llm_cost_micros",
        "compute_cost_micros",
        "cost_micros",
        "saved_micros",
    )
    out = dict.fromkeys(keys, 0)
    for row in rows:
        for key in keys:
            out[key] += getattr(row, key)
    return out


def as_dict(row: StepCostRow | CallRow | ModelCostRow) -> dict[str, Any]:
    """JSON-ready: datetimes as ISO text, and beside every ``*_micros`` amount its exact
    dollar value as text (``cost_usd``: ``"0.000285"``)."""
    out: dict[str, Any] = {}
    for key, value in asdict(row).items():
        out[key] = value.isoformat() if isinstance(value, datetime) else value
        if key.endswith("_micros") and isinstance(value, int):
            out[key.removesuffix("_micros") + "_usd"] = format(micros_to_usd(value), "f")
    return out


def recent_calls(engine: Engine, session_id: str, limit: int = 5) -> list[CallSummary]:
    """The newest LLM calls of one session's steps, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.model, c.input_tokens, c.output_tokens, c.cost_micros, "
                "c.saved_micros, c.cached, c.simulated FROM llm_calls AS c "
                "JOIN steps AS s ON s.id = c.step_id WHERE s.session_id = :session "
                "ORDER BY c.created_at DESC, c.id DESC LIMIT :limit"
            ),
            {"session": session_id, "limit": limit},
        ).all()
    return [CallSummary(**r._asdict()) for r in rows]
