"""LLM calls as the ledger records them: ``LlmCall`` (what is known about one call), its
``llm_calls`` row, and recording calls answered from the cache ($0 spent, each with its
``llm.call`` outbox event). A paid call's row is written by ``wflo_finish`` when its
reservation is settled (``ledger.finish``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from wflo_jupyter.core.budget import check_amount
from wflo_jupyter.core.pricing import Usage

__all__ = ["CALL_COLUMNS", "LlmCall", "call_row", "record_cached_calls"]


@dataclass(frozen=True)
class LlmCall:
    """What ``settle`` records about the call (one ``llm_calls`` row)."""

    provider: str
    model: str
    endpoint: str
    usage: Usage = field(default_factory=Usage)
    saved_micros: int = 0
    cached: bool = False
    simulated: bool = False
    latency_ms: int | None = None
    request_hash: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


# llm_calls columns the caller provides (step, reservation, cost and time come from SQL)
CALL_COLUMNS = frozenset(
    {
        "id",
        "provider",
        "model",
        "endpoint",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "saved_micros",
        "cached",
        "simulated",
        "latency_ms",
        "request_hash",
    }
)


def call_row(
    call: LlmCall, step_id: str | None, reservation_id: str | None, cost: int
) -> dict[str, Any]:
    """``call`` as an ``llm_calls`` row (without ``created_at``)."""
    usage = call.usage
    return {
        "id": call.id,
        "step_id": step_id,
        "reservation_id": reservation_id,
        "provider": call.provider,
        "model": call.model,
        "endpoint": call.endpoint,
        "input_tokens": usage.input,
        "cache_read_tokens": usage.cache_read,
        "cache_write_tokens": usage.cache_write_total,
        "output_tokens": usage.output,
        "reasoning_tokens": usage.reasoning,
        "cost_micros": cost,
        "saved_micros": check_amount(call.saved_micros),
        "cached": call.cached,
        "simulated": call.simulated,
        "latency_ms": call.latency_ms,
        "request_hash": call.request_hash,
    }


_INSERT_CACHED_CALLS = text(
    """
    WITH c AS (
        INSERT INTO llm_calls
        SELECT r.* FROM jsonb_array_elements(CAST(:calls AS jsonb)) AS e(v),
             LATERAL jsonb_populate_record(NULL::llm_calls,
                                           e.v || jsonb_build_object('created_at', now())) AS r
        RETURNING *
    )
    INSERT INTO outbox (event_id, event_type, topic, key, envelope)
    SELECT x.event_id, 'llm.call', :topic, x.key,
           jsonb_build_object('id', x.event_id, 'type', 'llm.call', 'key', x.key,
                              'occurred_at', now(), 'payload', x.payload)
    FROM (SELECT gen_random_uuid()::text AS event_id, coalesce(c.step_id, c.id) AS key,
                 (to_jsonb(c) - 'created_at') || jsonb_build_object('call_id', c.id) AS payload
          FROM c) AS x
    """
)


def record_cached_calls(
    engine: Engine, calls: Sequence[tuple[str | None, LlmCall]], llm_topic: str
) -> None:
    """Cache hits (step id, call), all in one statement: a $0 ``llm_calls`` row and an
    ``llm.call`` outbox event (on ``llm_topic``) each. The events are built by Postgres,
    as ``wflo_finish`` builds a paid call's, so a batch costs the host one JSON encoding."""
    if not calls:
        return
    rows = [call_row(call, step_id, None, 0) for step_id, call in calls]
    with engine.begin() as conn:
        conn.execute(
            _INSERT_CACHED_CALLS,
            {"calls": json.dumps(rows, separators=(",", ":")), "topic": llm_topic},
        )
