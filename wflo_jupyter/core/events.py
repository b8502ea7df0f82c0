"""Event types, their Kafka topics, their schema versions, and the JSON envelope every
event travels in.

Topics (``docs/architecture.md``, "Events"):

- ``wflo.steps``: ``step.*``;
- ``wflo.costs``: money moving: ``llm.call``, ``budget.threshold`` and ``budget.updated``
  for reservations, settlements, releases, expiries and compute charges;
- ``wflo.sandbox``: ``sandbox.*`` (started, stopped, killed, OOM, reaped);
- ``wflo.cache``: ``cache.cleared``;
- ``wflo.audit``: what people change: ``budget.updated`` with ``op`` ``set`` (a limit
  or period set by ``%wflo budget``) and ``team.joined``.

The envelope (``version`` 2 for the types that existed before it, 1 for the types added
with it): ``{id, type, version, key, occurred_at, session, step, payload}``. ``version``
is the schema version of ``type`` (``events/schemas/<type>.v<version>.json``); ``session``
and ``step`` are the session and step the event belongs to, or null. Bodies written
before the envelope had ``version`` (``{id, type, key, occurred_at, payload}``) are read
as version 1.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STEP_STARTED = "step.started"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
STEP_CANCELLED = "step.cancelled"

LLM_CALL = "llm.call"
BUDGET_UPDATED = "budget.updated"
BUDGET_THRESHOLD = "budget.threshold"

SANDBOX_STARTED = "sandbox.started"
SANDBOX_STOPPED = "sandbox.stopped"
SANDBOX_KILLED = "sandbox.killed"
SANDBOX_OOM = "sandbox.oom"
SANDBOX_REAPED = "sandbox.reaped"

CACHE_CLEARED = "cache.cleared"
TEAM_JOINED = "team.joined"

TOPIC_STEPS = "wflo.steps"
TOPIC_COSTS = "wflo.costs"
TOPIC_SANDBOX = "wflo.sandbox"
TOPIC_CACHE = "wflo.cache"
TOPIC_AUDIT = "wflo.audit"

ALL_TOPICS = (TOPIC_STEPS, TOPIC_COSTS, TOPIC_SANDBOX, TOPIC_CACHE, TOPIC_AUDIT)

TOPIC_BY_TYPE: Mapping[str, str] = {
    STEP_STARTED: TOPIC_STEPS,
    STEP_COMPLETED: TOPIC_STEPS,
    STEP_FAILED: TOPIC_STEPS,
    STEP_CANCELLED: TOPIC_STEPS,
    LLM_CALL: TOPIC_COSTS,
    BUDGET_UPDATED: TOPIC_COSTS,  # but ``op`` ``set``: TOPIC_AUDIT (``topic_for``)
    BUDGET_THRESHOLD: TOPIC_COSTS,
    SANDBOX_STARTED: TOPIC_SANDBOX,
    SANDBOX_STOPPED: TOPIC_SANDBOX,
    SANDBOX_KILLED: TOPIC_SANDBOX,
    SANDBOX_OOM: TOPIC_SANDBOX,
    SANDBOX_REAPED: TOPIC_SANDBOX,
    CACHE_CLEARED: TOPIC_CACHE,
    TEAM_JOINED: TOPIC_AUDIT,
}

ADMIN_BUDGET_OPS = frozenset({"set"})
"""``budget.updated`` ops made by a person (``wflo.audit``); every other op moves money."""

SCHEMA_VERSION: Mapping[str, int] = {
    event_type: 2 if event_type.startswith(("step.", "llm.", "budget.")) else 1
    for event_type in TOPIC_BY_TYPE
}
"""The schema version of each type's events as written now (the envelope's ``version``)."""

ENVELOPE_V1_VERSION = 1  # a body without ``version`` was written before it existed


def topic_for(event_type: str, payload: Mapping[str, Any] | None = None) -> str:
    """The Kafka topic an event of ``event_type`` (with ``payload``) is published to."""
    topic = TOPIC_BY_TYPE.get(event_type)
    if topic is None:
        raise ValueError(f"no topic for event type {event_type!r}")
    if event_type == BUDGET_UPDATED and payload and payload.get("op") in ADMIN_BUDGET_OPS:
        return TOPIC_AUDIT
    return topic


def schema_version(event_type: str) -> int:
    """The version of ``event_type``'s schema that events are written with now."""
    version = SCHEMA_VERSION.get(event_type)
    if version is None:
        raise ValueError(f"unknown event type {event_type!r}")
    return version


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Event:
    """One state change. ``key`` orders events of one subject (a step, a budget);
    ``session`` and ``step`` say whose change it is (None: nobody's, or derived by the
    ledger from the payload when the event is written: migration 0008)."""

    type: str
    key: str
    payload: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    session: str | None = None
    step: str | None = None
    version: int | None = None  # None: the type's current version (1 for unknown types)

    def __post_init__(self) -> None:
        if self.version is None:
            object.__setattr__(self, "version", SCHEMA_VERSION.get(self.type, 1))

    @property
    def topic(self) -> str:
        return topic_for(self.type, self.payload)

    def envelope(self) -> dict[str, Any]:
        """The envelope as a dict (what ``to_json`` encodes)."""
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "key": self.key,
            "occurred_at": self.occurred_at.isoformat(),
            "session": self.session,
            "step": self.step,
            "payload": self.payload,
        }

    def to_json(self) -> bytes:
        """The wire form published to Kafka."""
        return json.dumps(self.envelope(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        """Parse the wire form (version 1 bodies too); ``ValueError`` for anything
        malformed."""
        try:
            raw = json.loads(data)
            version = raw.get("version", ENVELOPE_V1_VERSION)
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise TypeError(f"version {version!r} is not a positive integer")
            return cls(
                type=str(raw["type"]),
                key=str(raw["key"]),
                payload=dict(raw["payload"]),
                id=str(raw["id"]),
                occurred_at=datetime.fromisoformat(raw["occurred_at"]),
                session=_optional(raw.get("session")),
                step=_optional(raw.get("step")),
                version=version,
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a wflo event: {exc}") from None
