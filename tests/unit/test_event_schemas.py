"""The events' JSON Schemas: one per event type and version, each a valid draft 2020-12
schema that accepts the envelopes the ledger writes (envelope v2: version, session, step;
version 1 bodies still validate against the version 1 files) and rejects broken ones with
one line naming the type, the version and the failing path."""

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
OLDER = ["budget.threshold", "budget.updated", "llm.call"] + [
    f"step.{s}" for s in ("cancelled", "completed", "failed", "started")
]
BOX = {"session_id": "k1", "sandbox_id": "c0ffee", "image": "wflo-runtime:python3.11"}
BOX |= {"isolation": "docker", "role": "session"}

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
    "sandbox.started": {**BOX, "memory_bytes": 512 << 20, "cpus": 1.0, "pids_limit": 128},
    "sandbox.stopped": {**BOX, "reason": "idle"},
    "sandbox.killed": {**BOX, "reason": "stuck", "exit_code": None, "during_cell": True},
    "sandbox.oom": {**BOX, "memory_bytes": 64 << 20, "during_cell": True},
    "sandbox.reaped": {"session_id": "k1", "sandbox_id": "c0ffee"},
    "cache.cleared": {"session_id": "k1", "scope": "model", "model": "gpt-4o", "notebook": None}
    | {"removed": 3},
    "team.joined": {"session_id": "k1", "team": "ml", "notebook": "a.ipynb"},
}


def envelope(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope exactly as ``Event.to_json`` writes it (the type's current version)."""
    event = Event(event_type, key="k1", payload=payload, session="k1", step=None)
    result: dict[str, Any] = json.loads(event.to_json())
    return result


def v1_body(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A body as written before envelope v2: no version, session nor step."""
    body = envelope(event_type, payload)
    return {k: v for k, v in body.items() if k not in ("version", "session", "step")}


def test_every_event_type_has_a_schema() -> None:
    assert "step.started" in EVENT_TYPES and "sandbox.oom" in EVENT_TYPES
    assert set(EVENT_TYPES) == set(SCHEMAS.types()) == set(events.TOPIC_BY_TYPE)
    assert set(SCHEMAS.types()) == set(VALID)  # each schema is exercised below


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_each_schema_is_valid_draft_2020_12_and_versioned(event_type: str) -> None:
    current = events.schema_version(event_type)
    assert SCHEMAS.versions(event_type) == list(range(1, current + 1))
    assert current == (2 if event_type in OLDER else 1)
    for version in SCHEMAS.versions(event_type):
        schema = SCHEMAS.load(event_type, version)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{event_type}.v{version}.json")
        SCHEMAS.validator(event_type, version)  # check_schema raises on a malformed one
        assert schema["properties"]["type"] == {"const": event_type}
        assert schema["properties"]["payload"]["additionalProperties"] is True


def test_every_schema_describes_the_same_envelope() -> None:
    def outside(event_type: str, version: int) -> dict[str, Any]:
        schema = SCHEMAS.load(event_type, version)
        props = {k: v for k, v in schema["properties"].items() if k not in ("type", "payload")}
        if "version" in props:
            assert props["version"]["const"] == version
            props["version"] = {**props["version"], "const": "N"}
        return {"required": schema["required"], "properties": props}

    v1 = outside("step.started", 1)
    assert v1["required"] == ["id", "type", "key", "occurred_at", "payload"]
    assert all(outside(t, 1) == v1 for t in OLDER)
    v2 = outside("step.started", 2)
    assert v2["required"] == [
        *["id", "type", "version", "key", "occurred_at", "session", "step", "payload"]
    ]
    assert v2["properties"]["session"]["type"] == ["string", "null"]
    assert all(outside(t, events.schema_version(t)) == v2 for t in SCHEMAS.types())


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_a_valid_envelope_passes(event_type: str) -> None:
    body = envelope(event_type, VALID[event_type])
    assert body["version"] == events.schema_version(event_type)
    SCHEMAS.validate(body)
    # a field the schema does not know yet is allowed (forward compatibility)
    SCHEMAS.validate(envelope(event_type, {**VALID[event_type], "added_later": [1]}))
    validate(body, body["version"])


@pytest.mark.parametrize("event_type", OLDER)
def test_a_version_1_body_still_validates_and_v2_needs_the_new_envelope(event_type: str) -> None:
    old = v1_body(event_type, VALID[event_type])
    SCHEMAS.validate(old)  # no version: read as version 1
    with pytest.raises(EventSchemaError, match=f"^{event_type} v2 at envelope: 'version' is a"):
        SCHEMAS.validate(old, 2)
    with pytest.raises(EventSchemaError, match=f"^{event_type} v2 at envelope: 'session' is a"):
        SCHEMAS.validate({**old, "version": 2})
    with pytest.raises(EventSchemaError, match="v2 at version: 2 was expected"):
        SCHEMAS.validate({**envelope(event_type, VALID[event_type]), "version": 3}, 2)
    with pytest.raises(EventSchemaError, match="version '2' is not a positive integer"):
        SCHEMAS.validate({**old, "version": "2"})


def test_a_postgres_timestamp_passes_and_a_bare_date_fails() -> None:
    event = envelope("step.started", STEP)
    SCHEMAS.validate({**event, "occurred_at": "2026-12-06T00:01:02.345678+00:00"})
    with pytest.raises(EventSchemaError, match=r"^step.started v2 at occurred_at: "):
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
        ("sandbox.stopped", {"reason": "bored"}, "payload.reason", "is not one of"),
        ("sandbox.oom", {"during_cell": 1}, "payload.during_cell", "is not of type 'boolean'"),
        ("cache.cleared", {"removed": -1}, "payload.removed", "less than the minimum"),
        ("team.joined", {"team": ""}, "payload.team", "should be non-empty"),
    ],
)
def test_a_wrong_field_names_the_type_and_the_path(
    event_type: str, change: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(EventSchemaError) as caught:
        SCHEMAS.validate(envelope(event_type, {**VALID[event_type], **change}))
    text = str(caught.value)
    assert text.startswith(f"{event_type} v{events.schema_version(event_type)} at {where}: ")
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
    with pytest.raises(EventSchemaError, match=r"no schema for event type 'step\.started' v7"):
        SCHEMAS.validate({**envelope("step.started", STEP), "version": 7})
