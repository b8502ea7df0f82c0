"""The events' JSON Schemas: loading them by event type and version, and validating an
envelope against them.

Each event type has one file per version, ``schemas/<type>.v<N>.json`` (JSON Schema
draft 2020-12, shipped as package data), describing the whole envelope and its payload:
``{id, type, version, key, occurred_at, session, step, payload}`` since envelope v2
(``core.events``; version 2 of the types that existed before, version 1 of the types added
with it), ``{id, type, key, occurred_at, payload}`` in the version 1 files of the older
types. An envelope is validated against the version it names (no ``version``: 1). Schemas allow
properties they do not name, so a consumer keeps validating events that gained a field.
A change that would break a consumer (a property or a required field removed, a type
changed) is a new version, not an edit: ``tests/unit/test_event_schema_compat.py``
compares every schema with the snapshot of its released version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from wflo_jupyter.core.errors import WfloError, one_line

_FILE = re.compile(r"^(?P<type>[a-z0-9_]+(?:\.[a-z0-9_]+)+)\.v(?P<version>[1-9][0-9]*)\.json$")


class EventSchemaError(WfloError):
    """An envelope does not match its event type's schema, or no schema exists for it."""


def _schema_files() -> dict[tuple[str, int], Any]:
    """``(type, version)`` to the schema file's resource, for every shipped schema."""
    found: dict[tuple[str, int], Any] = {}
    for entry in resources.files("wflo_jupyter.events").joinpath("schemas").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found[(match["type"], int(match["version"]))] = entry
    return found


def _where(path: Any) -> str:
    """A validation error's path as ``payload.budgets[0].key`` (``envelope`` for the root)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "envelope"


class EventSchemas:
    """The shipped schemas, each read and checked once per instance when first used."""

    def __init__(self) -> None:
        self._files = _schema_files()
        self._validators: dict[tuple[str, int], Draft202012Validator] = {}

    def types(self) -> list[str]:
        """Every event type that has a schema."""
        return sorted({event_type for event_type, _ in self._files})

    def versions(self, event_type: str) -> list[int]:
        """The versions of ``event_type``'s schema, oldest first (empty: none)."""
        return sorted(v for t, v in self._files if t == event_type)

    def latest(self, event_type: str) -> int:
        """The newest version of ``event_type``'s schema (``EventSchemaError``: none)."""
        versions = self.versions(event_type)
        if not versions:
            raise EventSchemaError(f"no schema for event type {one_line(event_type)!r}")
        return versions[-1]

    def load(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        """The schema of ``event_type`` at ``version`` (default: the newest), as a dict."""
        version = self.latest(event_type) if version is None else version
        entry = self._files.get((event_type, version))
        if entry is None:
            raise EventSchemaError(f"no schema for event type {event_type!r} v{version}")
        schema: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
        return schema

    def validator(self, event_type: str, version: int | None = None) -> Draft202012Validator:
        version = self.latest(event_type) if version is None else version
        key = (event_type, version)
        if key not in self._validators:
            schema = self.load(event_type, version)
            Draft202012Validator.check_schema(schema)
            self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]

    def validate(self, envelope: Mapping[str, Any], version: int | None = None) -> None:
        """Check ``envelope`` against its type's schema at ``version`` (default: the one
        the envelope names, 1 when it names none); ``EventSchemaError`` names the type and
        the failing path, on one line."""
        if not isinstance(envelope, Mapping):
            raise EventSchemaError(f"an event envelope is a JSON object, not {type(envelope)}")
        event_type = envelope.get("type")
        if not isinstance(event_type, str):
            raise EventSchemaError("event envelope without a string 'type'")
        if version is None:
            named = envelope.get("version", 1)
            if not isinstance(named, int) or isinstance(named, bool) or named < 1:
                shown = one_line(repr(named))[:40]
                raise EventSchemaError(f"{event_type}: version {shown} is not a positive integer")
            version = named
        validator = self.validator(event_type, version)
        error = best_match(validator.iter_errors(dict(envelope)))
        if error is not None:
            raise EventSchemaError(
                f"{event_type} v{version} at {_where(error.absolute_path)}: "
                f"{one_line(error.message)[:300]}"
            )


def validate(envelope: Mapping[str, Any], version: int | None = None) -> None:
    """``EventSchemas().validate``: for one-off checks (it reads the schema files anew;
    keep an ``EventSchemas`` to validate many envelopes)."""
    EventSchemas().validate(envelope, version)
