"""Event types, their Kafka topics, and the JSON envelope every event travels in."""

from __future__ import annotations

import json
import uuid
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

TOPIC_STEPS = "wflo.steps"
TOPIC_LLM = "wflo.llm"
TOPIC_BUDGETS = "wflo.budgets"

TOPIC_BY_PREFIX = {"step.": TOPIC_STEPS, "llm.": TOPIC_LLM, "budget.": TOPIC_BUDGETS}


def topic_for(event_type: str) -> str:
    """The Kafka topic an event of ``event_type`` is published to."""
    for prefix, topic in TOPIC_BY_PREFIX.items():
        if event_type.startswith(prefix):
            return topic
    raise ValueError(f"no topic for event type {event_type!r}")


@dataclass(frozen=True)
class Event:
    """One state change. ``key`` orders events of one subject (a step, a budget)."""

    type: str
    key: str
    payload: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def topic(self) -> str:
        return topic_for(self.type)

    def to_json(self) -> bytes:
        """The wire form published to Kafka."""
        envelope = {
            "id": self.id,
            "type": self.type,
            "key": self.key,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload,
        }
        return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        """Parse the wire form; raises ``ValueError`` for anything malformed."""
        try:
            raw = json.loads(data)
            return cls(
                type=str(raw["type"]),
                key=str(raw["key"]),
                payload=dict(raw["payload"]),
                id=str(raw["id"]),
                occurred_at=datetime.fromisoformat(raw["occurred_at"]),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a wflo event: {exc}") from None
