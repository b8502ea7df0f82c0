"""Events against a real Kafka-protocol broker: topics, producer, consumer, relay.

Covers the older project's Kafka producer / topics / consumer rows in spirit. Every
consumer closes cleanly and uses a fresh group id (a killed member wedges its group).
"""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from tests.helpers import start_step, wait_until
from wflo_jupyter.core.events import STEP_COMPLETED, Event
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.events import (
    EventConsumer,
    EventDeliveryError,
    EventProducer,
    KafkaConfigError,
    OutboxRelay,
    TopicAdmin,
    TopicMisconfigured,
)
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- topics ----------------------------------------------------------------------------
def test_topic_creation_and_existence(kafka_bootstrap: str) -> None:
    admin = TopicAdmin(kafka_bootstrap)
    name = _name()
    assert admin.exists(name) is False
    assert admin.ensure([name], partitions=3) == [name]
    assert admin.exists(name) is True
    assert admin.partitions(name) == 3


def test_topic_creation_is_idempotent(kafka_bootstrap: str) -> None:
    admin = TopicAdmin(kafka_bootstrap)
    name = _name()
    admin.ensure([name])
    assert admin.ensure([name]) == []


def test_topic_listing_hides_internal_topics(kafka_bootstrap: str) -> None:
    admin = TopicAdmin(kafka_bootstrap)
    names = [_name(), _name()]
    admin.ensure(names)
    listed = admin.names()
    assert set(names) <= set(listed)
    assert not [t for t in listed if t.startswith("__")]


def test_topic_configuration(kafka_bootstrap: str) -> None:
    admin = TopicAdmin(kafka_bootstrap)
    name = _name()
    admin.ensure([name], config={"retention.ms": "3600000"})
    config = admin.config(name)
    assert "cleanup.policy" in config
    assert config.get("retention.ms") == "3600000"


def test_topics_are_checked_against_their_plan(kafka_bootstrap: str) -> None:
    """``ensure_configured`` creates a missing topic as planned, accepts it as it is, and
    reports (one line) a topic whose partitions or retention differ from the plan."""
    admin = TopicAdmin(kafka_bootstrap)
    name = _name()
    plan = {"retention.ms": "3600000"}
    assert admin.ensure_configured([name], partitions=2, config=plan) == [name]
    assert admin.ensure_configured([name], partitions=2, config=plan) == []
    with pytest.raises(TopicMisconfigured, match=rf"{name} has 2 partitions, not 3") as info:
        admin.ensure_configured([name], partitions=3, config=plan)
    assert "\n" not in str(info.value)
    with pytest.raises(TopicMisconfigured, match=r"retention\.ms=3600000, not 60000"):
        admin.ensure_configured([name], partitions=2, config={"retention.ms": "60000"})


def test_unknown_topic_partitions(kafka_bootstrap: str) -> None:
    with pytest.raises(KeyError):
        TopicAdmin(kafka_bootstrap).partitions(_name("missing"))


def test_unreachable_broker_is_one_line() -> None:
    from wflo_jupyter.core.errors import EngineUnavailable

    with pytest.raises(EngineUnavailable, match=r"Kafka at 127\.0\.0\.1:1"):
        TopicAdmin("127.0.0.1:1", timeout_s=1).names()


# -- producer --------------------------------------------------------------------------
def test_producer_connects_and_confirms_delivery(kafka_bootstrap: str) -> None:
    topic = _name()
    TopicAdmin(kafka_bootstrap).ensure([topic], partitions=1)
    with EventProducer(kafka_bootstrap) as producer:
        outcomes = producer.publish_many(
            [(topic, "k", b"one", {}), (topic, "k", b"two", {"h": "v"})]
        )
    assert [type(o).__name__ for o in outcomes] == ["Delivery", "Delivery"]
    offsets = [o.offset for o in outcomes if not isinstance(o, EventDeliveryError)]
    assert offsets[1] == offsets[0] + 1


def test_producer_serialises_events(kafka_bootstrap: str) -> None:
    TopicAdmin(kafka_bootstrap).ensure(["wflo.steps"])
    event = Event(STEP_COMPLETED, key="step-1", payload={"cost_micros": 12})
    with EventProducer(kafka_bootstrap) as producer:
        delivery = producer.publish(event)
    assert delivery.topic == "wflo.steps"
    assert delivery.key == b"step-1"


def test_producer_reports_undeliverable_messages() -> None:
    with EventProducer("127.0.0.1:1", message_timeout_ms=1500) as producer:
        (outcome,) = producer.publish_many([("t", "k", b"v", {})], timeout_s=5)
    assert isinstance(outcome, EventDeliveryError)


def test_producer_rejects_unknown_configuration(kafka_bootstrap: str) -> None:
    with pytest.raises(KafkaConfigError, match="configuration rejected"):
        EventProducer(kafka_bootstrap, **{"no_such_property": 1})


def test_consumer_rejects_unknown_configuration(kafka_bootstrap: str) -> None:
    with pytest.raises(KafkaConfigError):
        EventConsumer(kafka_bootstrap, _name("g"), ["x"], **{"consumer_timeout_ms": 1})


def test_closed_producer_refuses(kafka_bootstrap: str) -> None:
    producer = EventProducer(kafka_bootstrap)
    producer.close()
    producer.close()  # idempotent
    with pytest.raises(EventDeliveryError, match="closed"):
        producer.publish(Event(STEP_COMPLETED, key="k", payload={}))


def test_producer_context_manager_flushes(kafka_bootstrap: str) -> None:
    topic = _name()
    TopicAdmin(kafka_bootstrap).ensure([topic], partitions=1)
    with EventProducer(kafka_bootstrap) as producer:
        producer.publish_many([(topic, "k", b"x", {})])
    with EventConsumer(kafka_bootstrap, _name("g"), [topic]) as consumer:
        values = [m.value() for m in consumer.messages(10)][:1]
    assert values == [b"x"]


# -- consumer --------------------------------------------------------------------------
def test_produce_then_consume_events(kafka_bootstrap: str) -> None:
    topic = _name()
    TopicAdmin(kafka_bootstrap).ensure([topic], partitions=2)
    sent = [Event(STEP_COMPLETED, key=f"s{i}", payload={"i": i}) for i in range(5)]
    with EventProducer(kafka_bootstrap) as producer:
        producer.publish_many([(topic, e.key, e.to_json(), {"event_id": e.id}) for e in sent])
    received: list[Event] = []
    with EventConsumer(kafka_bootstrap, _name("g"), [topic]) as consumer:
        for event in consumer.events(15):
            received.append(event)
            if len(received) == len(sent):
                break
    assert sorted(e.id for e in received) == sorted(e.id for e in sent)
    assert {e.payload["i"] for e in received} == set(range(5))


def test_consumer_deserialisation_rejects_garbage(kafka_bootstrap: str) -> None:
    topic = _name()
    TopicAdmin(kafka_bootstrap).ensure([topic], partitions=1)
    with EventProducer(kafka_bootstrap) as producer:
        producer.publish_many([(topic, "k", b"not json", {})])
    with (
        EventConsumer(kafka_bootstrap, _name("g"), [topic]) as consumer,
        pytest.raises(ValueError, match="not a wflo event"),
    ):
        next(consumer.events(15))


def test_consumer_connect_and_close(kafka_bootstrap: str) -> None:
    """The consumer joins its group on the broker; ``close`` leaves the group at once (not
    after the 10 s session timeout), is idempotent, and the closed consumer reads nothing."""
    topic, group = _name(), _name("g")
    TopicAdmin(kafka_bootstrap).ensure([topic])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def members() -> int:
        return len(admin.describe_consumer_groups([group])[group].result(10).members)

    consumer = EventConsumer(kafka_bootstrap, group, [topic])
    try:

        def joined() -> bool:
            list(consumer.messages(0.2))  # the consumer joins its group while it polls
            return members() == 1

        wait_until(joined, 30, what=f"the consumer to join group {group}")
    finally:
        consumer.close()
    consumer.close()  # idempotent
    assert members() == 0
    with pytest.raises(RuntimeError, match="closed"):
        next(consumer.messages(1))


def test_consumers_in_one_group_share_partitions(kafka_bootstrap: str) -> None:
    topic = _name()
    TopicAdmin(kafka_bootstrap).ensure([topic], partitions=4)
    group = _name("g")
    with EventProducer(kafka_bootstrap) as producer:
        producer.publish_many([(topic, f"key-{i}", str(i).encode(), {}) for i in range(40)])
    seen: list[bytes] = []
    with (
        EventConsumer(kafka_bootstrap, group, [topic]) as first,
        EventConsumer(kafka_bootstrap, group, [topic]) as second,
    ):

        def all_read() -> bool:
            for consumer in (first, second):
                seen.extend(m.value() or b"" for m in consumer.messages(0.5))
            return len(seen) >= 40

        wait_until(all_read, 60, interval=0, what="the 40 messages to be read")
    # Each message is delivered to exactly one member of the group.
    assert sorted(seen, key=int) == [str(i).encode() for i in range(40)]


# -- outbox relay ----------------------------------------------------------------------
def test_outbox_relay_publishes_then_marks_sent(
    fresh_database_url: str, kafka_bootstrap: str
) -> None:
    ledger = Ledger.connect(fresh_database_url)
    session_id, step_id = start_step(ledger)
    ledger.finish_step(
        StepResult(step_id=step_id, status="completed", exit_code=0, exit_reason="ok")
    )
    relay = OutboxRelay(ledger, kafka_bootstrap)
    try:
        assert relay.relay_once() == 2
        assert ledger.unsent_events() == []
        assert relay.relay_once() == 0
        with EventConsumer(kafka_bootstrap, _name("g"), ["wflo.steps"]) as consumer:
            event = consumer.wait_for(lambda e: e.key == step_id and e.type == "step.completed")
        assert event.payload["status"] == "completed"
        assert json.loads(json.dumps(event.payload))["session_id"] == session_id
    finally:
        relay.stop()
        ledger.close()
