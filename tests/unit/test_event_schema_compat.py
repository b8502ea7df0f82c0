"""Event schemas stay compatible with their released versions: each shipped schema is
compared with the committed snapshot of its version (``tests/fixtures/event_schemas``).
A change that breaks consumers needs a new version file (``<type>.v2.json``) beside the
old one, which stays. The checker itself is tested on crafted pairs of schemas."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.event_schema_compat import breaking_changes
from wflo_jupyter.events.schemas import EventSchemas

SNAPSHOTS = Path(__file__).resolve().parent.parent / "fixtures" / "event_schemas"
SCHEMAS = EventSchemas()
SNAPSHOT_FILES = sorted(SNAPSHOTS.glob("*.json"))


def _name(path: Path) -> tuple[str, int]:
    match = re.fullmatch(r"(.+)\.v(\d+)\.json", path.name)
    assert match, path.name
    return match[1], int(match[2])


def test_there_are_snapshots() -> None:
    assert len(SNAPSHOT_FILES) >= 7


@pytest.mark.parametrize("snapshot", SNAPSHOT_FILES, ids=lambda p: p.name)
def test_each_released_schema_is_still_shipped_and_compatible(snapshot: Path) -> None:
    event_type, version = _name(snapshot)
    assert version in SCHEMAS.versions(event_type), f"{snapshot.name} is no longer shipped"
    old = json.loads(snapshot.read_text())
    assert breaking_changes(old, SCHEMAS.load(event_type, version)) == []


@pytest.mark.parametrize("event_type", SCHEMAS.types())
def test_every_shipped_version_has_a_snapshot_and_versions_count_up(event_type: str) -> None:
    versions = SCHEMAS.versions(event_type)
    assert versions == list(range(1, len(versions) + 1))
    snapped = {_name(p) for p in SNAPSHOT_FILES}
    assert {(event_type, v) for v in versions} <= snapped


# -- the checker, on crafted pairs ---------------------------------------------------------

BASE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "payload"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "type": {"const": "x.happened"},
        "payload": {
            "type": "object",
            "required": ["n", "status"],
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 100},
                "status": {"enum": ["ok", "bad"]},
                "note": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "if": {"required": ["status"], "properties": {"status": {"const": "bad"}}},
            "then": {"required": ["note"]},
        },
    },
}


def changed(edit: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    edit(schema, schema["properties"]["payload"])
    return schema


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    target[key] = value


BREAKING = [
    ("required removed", lambda s, p: p["required"].remove("n"), "'n' no longer required"),
    ("newly required", lambda s, p: p["required"].append("note"), "'note' newly required"),
    ("property removed", lambda s, p: p["properties"].pop("note"), ".note: property removed"),
    (
        "type changed",
        lambda s, p: _set(p["properties"]["n"], "type", "string"),
        "$.payload.n: type changed from integer to string",
    ),
    (
        "type widened",
        lambda s, p: _set(p["properties"]["n"], "type", ["integer", "null"]),
        "type changed from integer to integer|null",
    ),
    ("const changed", lambda s, p: _set(s["properties"]["type"], "const", "y"), "const changed"),
    (
        "enum value removed",
        lambda s, p: _set(p["properties"]["status"], "enum", ["ok"]),
        "enum values removed",
    ),
    (
        "bound tightened",
        lambda s, p: _set(p["properties"]["n"], "maximum", 10),
        "maximum tightened from 100 to 10",
    ),
    (
        "closed",
        lambda s, p: _set(p, "additionalProperties", False),
        "additionalProperties closed",
    ),
    (
        "item type changed",
        lambda s, p: _set(p["properties"]["tags"]["items"], "type", "integer"),
        "$.payload.tags[]: type changed",
    ),
    ("then loosened", lambda s, p: p.pop("then"), "$.payload(then): 'note' no longer required"),
    (
        "condition changed",
        lambda s, p: _set(p["if"]["properties"]["status"], "const", "ok"),
        "condition (if) changed",
    ),
]


@pytest.mark.parametrize(
    ("edit", "expected"), [b[1:] for b in BREAKING], ids=[b[0] for b in BREAKING]
)
def test_the_checker_finds_a_breaking_change(edit: Any, expected: str) -> None:
    found = breaking_changes(BASE, changed(edit))
    assert len(found) == 1, found
    assert expected in found[0]


COMPATIBLE = [
    ("identical", lambda s, p: None),
    ("optional property added", lambda s, p: _set(p["properties"], "extra", {"type": "integer"})),
    ("description", lambda s, p: _set(p["properties"]["n"], "description", "how many")),
    ("enum value added", lambda s, p: p["properties"]["status"]["enum"].append("late")),
    ("bound loosened", lambda s, p: _set(p["properties"]["n"], "maximum", 1000)),
    ("envelope property added", lambda s, p: _set(s["properties"], "version", {"type": "integer"})),
]


@pytest.mark.parametrize("edit", [c[1] for c in COMPATIBLE], ids=[c[0] for c in COMPATIBLE])
def test_the_checker_passes_a_compatible_change(edit: Any) -> None:
    assert breaking_changes(BASE, changed(edit)) == []


def test_a_schema_that_loses_a_payload_field_and_changes_a_type_is_caught_in_full() -> None:
    old = SCHEMAS.load("step.completed")
    new = copy.deepcopy(old)
    del new["properties"]["payload"]["properties"]["sandbox_ms"]
    new["properties"]["payload"]["required"].remove("sandbox_ms")
    new["properties"]["payload"]["properties"]["seq"]["type"] = "string"
    assert sorted(breaking_changes(old, new)) == [
        "$.payload.sandbox_ms: property removed",
        "$.payload.seq: type changed from integer to string",
        "$.payload: 'sandbox_ms' no longer required",
    ]
