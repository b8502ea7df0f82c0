"""Event routing and envelope v2 (``core.events``): every type has one topic of the five,
``budget.updated`` goes to ``wflo.audit`` only when a person set the budget, and the
envelope carries version, session and step while version 1 bodies still parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from wflo_jupyter.core import events
from wflo_jupyter.core.events import (
    ALL_TOPICS,
    BUDGET_THRESHOLD,
    BUDGET_UPDATED,
    CACHE_CLEARED,
    LLM_CALL,
    SANDBOX_OOM,
    STEP_STARTED,
    TEAM_JOINED,
    Event,
    schema_version,
    topic_for,
)

EXPECTED = {
    "step.started": "wflo.steps",
    "step.completed": "wflo.steps",
    "step.failed": "wflo.steps",
    "step.cancelled": "wflo.steps",
    "llm.call": "wflo.costs",
    "budget.updated": "wflo.costs",
    "budget.threshold": "wflo.costs",
    "sandbox.started": "wflo.sandbox",
    "sandbox.stopped": "wflo.sandbox",
    "sandbox.killed": "wflo.sandbox",
    "sandbox.oom": "wflo.sandbox",
    "sandbox.reaped": "wflo.sandbox",
    "cache.cleared": "wflo.cache",
    "team.joined": "wflo.audit",
}


def test_the_five_topics_of_the_issue() -> None:
    assert sorted(ALL_TOPICS) == [
        "wflo.audit",
        "wflo.cache",
        "wflo.costs",
        "wflo.sandbox",
        "wflo.steps",
    ]
    assert set(events.TOPIC_BY_TYPE.values()) == set(ALL_TOPICS)  # none is left empty


@pytest.mark.parametrize(("event_type", "topic"), sorted(EXPECTED.items()))
def test_every_type_is_routed(event_type: str, topic: str) -> None:
    assert topic_for(event_type) == topic
    assert Event(event_type, key="k", payload={}).topic == topic


def test_every_defined_type_is_in_the_table() -> None:
    defined = {
        v
        for n, v in vars(events).items()
        if n.isupper() and isinstance(v, str) and not n.startswith("TOPIC_")
    }
    assert defined == set(EXPECTED) == set(events.TOPIC_BY_TYPE)


@pytest.mark.parametrize(
    ("op", "topic"),
    [
        ("set", "wflo.audit"),
        *[(op, "wflo.costs") for op in ("reserve", "settle", "release", "expire", "compute")],
    ],
)
def test_a_budget_set_by_a_person_is_audit_money_moving_is_costs(op: str, topic: str) -> None:
    payload = {"kind": "team", "key": "ml", "op": op}
    assert topic_for(BUDGET_UPDATED, payload) == topic
    assert Event(BUDGET_UPDATED, key="team:ml", payload=payload).topic == topic
    assert topic_for(BUDGET_THRESHOLD, {"op": "set"}) == "wflo.costs"  # only budget.updated


def test_an_unknown_type_has_no_topic_and_no_version() -> None:
    with pytest.raises(ValueError, match=r"no topic for event type 'sandbox\.exploded'"):
        topic_for("sandbox.exploded")
    with pytest.raises(ValueError, match="unknown event type 'nothing'"):
        schema_version("nothing")
    assert Event("nothing", key="k", payload={}).version == 1


def test_envelope_v2_carries_version_session_and_step() -> None:
    event = Event(STEP_STARTED, key="s1", payload={"seq": 1}, session="k1", step="s1")
    body = json.loads(event.to_json())
    assert sorted(body) == sorted(
        ["id", "type", "version", "key", "occurred_at", "session", "step", "payload"]
    )
    assert (body["version"], body["session"], body["step"]) == (2, "k1", "s1")
    assert Event.from_json(event.to_json()) == event
    new = Event(SANDBOX_OOM, key="k1", payload={}, session="k1")
    assert json.loads(new.to_json())["version"] == 1 and new.step is None
    assert [schema_version(t) for t in (LLM_CALL, CACHE_CLEARED, TEAM_JOINED)] == [2, 1, 1]


def test_a_version_1_body_is_read_as_version_1_without_session_or_step() -> None:
    old = {
        "id": "e1",
        "type": "step.started",
        "key": "s1",
        "occurred_at": "2026-12-06T01:02:03+00:00",
        "payload": {"session_id": "k1"},
    }
    event = Event.from_json(json.dumps(old).encode())
    assert (event.version, event.session, event.step) == (1, None, None)
    assert event.occurred_at == datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
    assert event.topic == "wflo.steps"


@pytest.mark.parametrize("version", ["2", 0, True, None])
def test_a_bad_version_is_not_a_wflo_event(version: object) -> None:
    body = json.loads(Event(STEP_STARTED, key="s", payload={}).to_json())
    with pytest.raises(ValueError, match="not a wflo event: version"):
        Event.from_json(json.dumps({**body, "version": version}).encode())
