"""The consumer API against the real Kafka broker: schema-validated decoding (an invalid
message reported, never fatal), deduplication by id in a bounded window, where a new
group starts, the group's committed offsets (at-least-once), and one-line configuration
errors. Events come from a real ledger's outbox, published by the real relay or producer.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import start_step, wait_until
from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.events import ALL_TOPICS
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.events import (
    ConsumedEvent,
    EventConsumer,
    EventProducer,
    InvalidMessage,
    KafkaConfigError,
    OutboxRelay,
    TopicAdmin,
)
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.postgres]


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def envelopes(fresh_database_url: str) -> Iterator[list[bytes]]:
    """The outbox rows of one real step (started, completed): valid envelopes, in order."""
    ledger = Ledger.connect(fresh_database_url)
    try:
        _, step_id = start_step(ledger, name="consumed")
        ledger.finish_step(
            StepResult(step_id=step_id, status="completed", exit_code=0, exit_reason="ok")
        )
        rows = ledger.unsent_events()
        yield [row.payload for row in rows if row.topic == "wflo.steps"]
    finally:
        ledger.close()


def _topic(bootstrap: str, messages: list[bytes], partitions: int = 1) -> str:
    """A private topic holding ``messages`` (one partition: read back in order)."""
    topic = _name()
    TopicAdmin(bootstrap).ensure([topic], partitions=partitions)
    with EventProducer(bootstrap) as producer:
        outcomes = producer.publish_many([(topic, "session-1", m, {}) for m in messages])
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    return topic


def _retyped(envelope: bytes, **changes: object) -> bytes:
    body = json.loads(envelope)
    body.update(changes)
    return json.dumps(body).encode()


# -- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["", "  ", None])
def test_a_missing_group_id_is_one_line(kafka_bootstrap: str, group: str | None) -> None:
    with pytest.raises(KafkaConfigError) as caught:
        EventConsumer(kafka_bootstrap, group)
    assert str(caught.value) == "Kafka consumer: group.id is required (a consumer group name)"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"consumer_timeout_ms": 1}, 'No such configuration property: "consumer.timeout.ms"'),
        ({"session_timeout_ms": "soon"}, 'configuration property "session.timeout.ms"'),
    ],
)
def test_a_configuration_mistake_is_one_line_naming_the_property(
    kafka_bootstrap: str, overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(KafkaConfigError) as caught:
        EventConsumer(kafka_bootstrap, _name("g"), **overrides)
    message = str(caught.value)
    assert message.startswith("Kafka configuration rejected: ")
    assert named in message
    assert "\n" not in message and "KafkaError{" not in message


def test_default_topics_are_every_wflo_topic(kafka_bootstrap: str) -> None:
    with EventConsumer(kafka_bootstrap, _name("g")) as consumer:
        assert consumer.topics == sorted(ALL_TOPICS)


def test_check_names_the_topics_not_created_yet(kafka_bootstrap: str) -> None:
    there, missing = _name(), _name()
    TopicAdmin(kafka_bootstrap).ensure([there])
    with EventConsumer(kafka_bootstrap, _name("g"), [there, missing]) as consumer:
        assert consumer.check() == [missing]


def test_an_unreachable_broker_is_one_line() -> None:
    with EventConsumer("127.0.0.1:1", _name("g")) as consumer, pytest.raises(WfloError) as caught:
        consumer.check(timeout_s=2)
    assert str(caught.value).startswith("Kafka at 127.0.0.1:1: ")
    assert "\n" not in str(caught.value)


# -- decoding -----------------------------------------------------------------------------
def test_invalid_messages_are_reported_one_by_one_and_reading_goes_on(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    started, completed = envelopes
    no_name = json.loads(started)
    del no_name["payload"]["name"]
    topic = _topic(
        kafka_bootstrap,
        [
            b"not json",
            started,
            b"[1, 2]",
            json.dumps(no_name).encode(),
            _retyped(started, type="no.such_type"),
            completed,
        ],
    )
    with EventConsumer(kafka_bootstrap, _name("g"), [topic]) as consumer:
        items = list(consumer.read(idle_s=5, limit=6))
    kinds = [type(item).__name__ for item in items]
    assert kinds == [
        "InvalidMessage",
        "ConsumedEvent",
        "InvalidMessage",
        "InvalidMessage",
        "InvalidMessage",
        "ConsumedEvent",
    ]
    bad = [item for item in items if isinstance(item, InvalidMessage)]
    assert bad[0].reason.startswith("not JSON: ")
    assert bad[1].reason == "not a wflo event: a JSON list"
    assert re.match(r"step\.started v\d+ at payload: 'name' is a required property", bad[2].reason)
    assert "no schema for event type 'no.such_type'" in bad[3].reason
    assert bad[0].line() == f"{topic}[0]@0: {bad[0].reason}"
    assert consumer.invalid == 4
    good = [item for item in items if isinstance(item, ConsumedEvent)]
    assert [g.type for g in good] == ["step.started", "step.completed"]
    assert good[0].envelope == json.loads(started)
    assert good[0].key == "session-1" and good[0].offset == 1
    assert good[0].session == json.loads(started)["payload"]["session_id"]


def test_without_validation_a_well_formed_event_passes(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    odd = json.loads(envelopes[0])
    del odd["payload"]["name"]
    topic = _topic(kafka_bootstrap, [json.dumps(odd).encode()])
    with EventConsumer(kafka_bootstrap, _name("g"), [topic], validate=False) as consumer:
        (item,) = consumer.read(idle_s=5, limit=1)
    assert isinstance(item, ConsumedEvent)
    assert "name" not in item.event.payload


# -- deduplication ------------------------------------------------------------------------
def test_dedupe_skips_an_id_seen_within_the_window(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    a, b = envelopes
    topic = _topic(kafka_bootstrap, [a, a, b, a, b])
    with EventConsumer(kafka_bootstrap, _name("g"), [topic], dedupe=10) as consumer:
        ids = [item.id for item in consumer.read(idle_s=5) if isinstance(item, ConsumedEvent)]
    assert ids == [json.loads(a)["id"], json.loads(b)["id"]]
    assert consumer.duplicates == 3


def test_dedupe_memory_is_bounded_by_its_window(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    a, b = envelopes
    topic = _topic(kafka_bootstrap, [a, b, a, a])
    with EventConsumer(kafka_bootstrap, _name("g"), [topic], dedupe=1) as consumer:
        ids = [item.id for item in consumer.read(idle_s=5) if isinstance(item, ConsumedEvent)]
    a_id, b_id = json.loads(a)["id"], json.loads(b)["id"]
    # a window of one id forgets a once b is seen; the repeat right after a is skipped
    assert ids == [a_id, b_id, a_id]
    assert consumer.duplicates == 1


# -- groups and offsets -------------------------------------------------------------------
def test_a_group_resumes_after_what_it_handled(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    a, b = envelopes
    messages = [a, b, _retyped(a, id=str(uuid.uuid4())), _retyped(b, id=str(uuid.uuid4()))]
    topic, group = _topic(kafka_bootstrap, messages), _name("g")
    ids = [json.loads(m)["id"] for m in messages]

    def read(limit: int | None = None) -> list[str]:
        with EventConsumer(kafka_bootstrap, group, [topic]) as consumer:
            return [
                i.id for i in consumer.read(idle_s=5, limit=limit) if isinstance(i, ConsumedEvent)
            ]

    assert read(limit=2) == ids[:2]  # a clean close counts the last item as handled
    # an item whose handling raised is not counted: the group gets it again
    handled: list[str] = []

    def handle_failing() -> None:
        with EventConsumer(kafka_bootstrap, group, [topic]) as consumer:
            for item in consumer.read(idle_s=5):
                assert isinstance(item, ConsumedEvent)
                handled.append(item.id)
                raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        handle_failing()
    assert handled == [ids[2]]
    assert read() == ids[2:]
    assert read() == []  # everything handled and committed


def test_commit_saves_progress_without_closing(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    topic, group = _topic(kafka_bootstrap, envelopes), _name("g")
    first = EventConsumer(kafka_bootstrap, group, [topic])
    try:
        item = wait_until(lambda: first.poll(1), 30, what="the first event")
        first.commit()
        first.commit()  # nothing new: not an error
    finally:
        first.close(handled=False)  # leaves the group; the commit stands
    assert isinstance(item, ConsumedEvent) and item.type == "step.started"
    with EventConsumer(kafka_bootstrap, group, [topic]) as second:
        rest = [i.type for i in second.read(idle_s=5) if isinstance(i, ConsumedEvent)]
    assert rest == ["step.completed"]


def test_a_new_group_reading_latest_skips_older_events(
    kafka_bootstrap: str, envelopes: list[bytes]
) -> None:
    old, new = envelopes
    topic = _topic(kafka_bootstrap, [old])
    seen: list[str] = []
    with (
        EventConsumer(kafka_bootstrap, _name("g"), [topic], from_beginning=False) as consumer,
        EventProducer(kafka_bootstrap) as producer,
    ):

        def got_one() -> bool:
            # keep publishing ``new`` until the consumer, now positioned, reads one
            producer.publish_many([(topic, "session-1", new, {})])
            seen.extend(i.type for i in consumer.read(idle_s=1) if isinstance(i, ConsumedEvent))
            return bool(seen)

        wait_until(got_one, 60, interval=0, what="a newly published event")
    assert set(seen) == {"step.completed"}  # never the older step.started


def test_events_from_the_real_relay_decode_and_validate(
    fresh_database_url: str, kafka_bootstrap: str
) -> None:
    ledger = Ledger.connect(fresh_database_url)
    relay = OutboxRelay(ledger, kafka_bootstrap)
    try:
        session_id, step_id = start_step(ledger, name="relayed")
        assert relay.relay_once() >= 1
    finally:
        relay.stop()
        ledger.close()
    with EventConsumer(kafka_bootstrap, _name("g"), ["wflo.steps"], dedupe=1000) as consumer:

        def found() -> list[ConsumedEvent]:
            return [
                i
                for i in consumer.read(idle_s=1)
                if isinstance(i, ConsumedEvent) and i.in_session(session_id)
            ]

        (item,) = wait_until(found, 60, interval=0, what="the relayed step.started")
    assert item.type == "step.started"
    assert item.key == session_id  # the Kafka key is the session
    assert item.session == session_id
    assert item.event.payload["step_id"] == step_id
