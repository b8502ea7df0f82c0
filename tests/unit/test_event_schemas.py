"""The events' JSON Schemas: one per event type, each a valid draft 2020-12 schema that
accepts the envelopes the ledger writes and rejects broken ones with one line naming the
type and the failing path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wflo_jupyter.core import events
from wflo_jupyter.core.events import Event
from wflo_jupyter.events.schemas import EventSchemaError, EventSchemas, validate

SCHEMAS = EventSchemas()

# every event type the package defines: core.events' constants that are not topics
EVENT_TYPES = sorted(
    value
    for name, value in vars(events).items()
    if name.isupper() and isinstance(value, str) and not name.startswith("TOPIC_")
)

STEP = {"step_id": "s1", "session_id": "k1", "name": "cell 1", "seq": 1, "workflow_id": "wf-1"}
STEP_END = {
    **STEP,
    "exit_code": 0,
    "exit_reason": None,
    "error": None,
    "duration_ms": 1200,
    "sandbox_ms": 800,
    "cost_micros": 0,
}
TOTALS = {
    "kind": "team",
    "key": "ml",
    "name": "team ml",
    "limit_micros": 1_000_000,
    "spent_micros": 600_000,
    "reserved_micros": 0,
    "period": "none",
    "period_start": None,
    "thresholds_emitted": [50],
}
CALL = {
    "id": "c1",
    "call_id": "c1",
    "step_id": "s1",
    "reservation_id": None,
    "provider": "openai",
    "model": "gpt-4o-mini",
    "endpoint": "chat.completions",
    "input_tokens": 10,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "output_tokens": 5,
    "reasoning_tokens": 0,
    "cost_micros": 0,
    "saved_micros": 12,
    "cached": True,
    "simulated": False,
    "latency_ms": None,
    "request_hash": "ab" * 32,
}
VALID: dict[str, dict[str, Any]] = {
    "step.started": STEP,
    "step.completed": {**STEP_END, "status": "completed"},
    "step.failed": {**STEP_END, "status": "failed", "exit_code": 1, "error": "ValueError: x"},
    "step.cancelled": {**STEP_END, "status": "cancelled", "exit_code": None},
    "llm.call": CALL,
    "budget.updated": {**TOTALS, "op": "settle", "reservation": "r1", "actual_micros": 5},
    "budget.threshold": {**TOTALS, "threshold": 50},
}


def envelope(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope exactly as ``Event.to_json`` writes it."""
    result: dict[str, Any] = json.loads(Event(event_type, key="k1", payload=payload).to_json())
    return result


def test_every_event_type_has_a_schema() -> None:
    assert "step.started" in EVENT_TYPES and "budget.threshold" in EVENT_TYPES
    assert set(EVENT_TYPES) <= set(SCHEMAS.types())
    assert set(SCHEMAS.types()) == set(VALID)  # each schema is exercised below


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_each_schema_is_valid_draft_2020_12_and_versioned(event_type: str) -> None:
    schema = SCHEMAS.load(event_type)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{event_type}.v1.json")
    assert SCHEMAS.versions(event_type) == [1]
    SCHEMAS.validator(event_type)  # check_schema raises on a malformed schema
    assert schema["properties"]["type"] == {"const": event_type}
    assert schema["properties"]["payload"]["additionalProperties"] is True


def test_every_schema_describes_the_same_envelope() -> None:
    def outside(event_type: str) -> dict[str, Any]:
        schema = SCHEMAS.load(event_type)
        props = {k: v for k, v in schema["properties"].items() if k not in ("type", "payload")}
        return {"required": schema["required"], "properties": props}

    first = outside("step.started")
    assert first["required"] == ["id", "type", "key", "occurred_at", "payload"]
    assert all(outside(t) == first for t in SCHEMAS.types())


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_a_valid_envelope_passes(event_type: str) -> None:
    SCHEMAS.validate(envelope(event_type, VALID[event_type]))
    # a field the schema does not know yet is allowed (forward compatibility)
    SCHEMAS.validate(envelope(event_type, {**VALID[event_type], "added_later": [1]}))
    validate({**envelope(event_type, VALID[event_type]), "version": 1})


def test_a_postgres_timestamp_passes_and_a_bare_date_fails() -> None:
    event = envelope("step.started", STEP)
    SCHEMAS.validate({**event, "occurred_at": "2026-12-06T00:01:02.345678+00:00"})
    with pytest.raises(EventSchemaError, match=r"^step.started v1 at occurred_at: "):
        SCHEMAS.validate({**event, "occurred_at": "2026-12-06 00:01:02+00"})


@pytest.mark.parametrize(
    ("event_type", "change", "where", "message"),
    [
        ("step.started", {"seq": "1"}, "payload.seq", "is not of type 'integer'"),
        ("step.completed", {"status": "failed"}, "payload.status", "'completed' was expected"),
        ("step.failed", {"exit_code": 1.5}, "payload.exit_code", "is not of type"),
        ("step.cancelled", {"cost_micros": -1}, "payload.cost_micros", "less than the minimum"),
        ("llm.call", {"cached": "yes"}, "payload.cached", "is not of type 'boolean'"),
        ("budget.threshold", {"threshold": 150}, "payload.threshold", "greater than the max"),
        ("budget.updated", {"limit_micros": None}, "payload.limit_micros", "is not of type"),
    ],
)
def test_a_wrong_field_names_the_type_and_the_path(
    event_type: str, change: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(EventSchemaError) as caught:
        SCHEMAS.validate(envelope(event_type, {**VALID[event_type], **change}))
    text = str(caught.value)
    assert text.startswith(f"{event_type} v1 at {where}: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_a_missing_required_field_fails(event_type: str) -> None:
    schema = SCHEMAS.load(event_type)
    for name in schema["properties"]["payload"]["required"]:
        payload = {k: v for k, v in VALID[event_type].items() if k != name}
        with pytest.raises(EventSchemaError, match=f"at payload: '{name}' is a required"):
            SCHEMAS.validate(envelope(event_type, payload))


def test_a_reserve_update_needs_what_was_reserved_not_the_totals() -> None:
    reserve = {
        "kind": "cell",
        "key": "s1",
        "op": "reserve",
        "reservation": "r1",
        "amount_micros": 900,
        "step_id": "s1",
        "label": "gpt-4o-mini",
    }
    SCHEMAS.validate(envelope("budget.updated", reserve))
    with pytest.raises(EventSchemaError, match="'amount_micros' is a required property"):
        SCHEMAS.validate(
            envelope("budget.updated", {k: v for k, v in reserve.items() if k != "amount_micros"})
        )
    settle = {k: v for k, v in reserve.items() if k != "amount_micros"} | {"op": "settle"}
    with pytest.raises(EventSchemaError, match="'name' is a required property"):
        SCHEMAS.validate(envelope("budget.updated", settle))


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"id": "e1", "key": "k", "occurred_at": "x", "payload": {}}, "without a string 'type'"),
        ({"type": "step.unknown"}, "no schema for event type 'step.unknown'"),
        ({"type": "step.started", "payload": {}}, "at envelope: 'id' is a required property"),
    ],
)
def test_an_unknown_or_broken_envelope_is_one_line(broken: dict[str, Any], message: str) -> None:
    with pytest.raises(EventSchemaError, match=message):
        SCHEMAS.validate(broken)
    with pytest.raises(EventSchemaError, match="v7"):
        SCHEMAS.load("step.started", 7)
