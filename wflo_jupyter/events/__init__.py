"""Kafka side of the event stream: topics, producer, consumer and the outbox relay."""

from wflo_jupyter.events.consumer import ConsumedEvent, EventConsumer, InvalidMessage
from wflo_jupyter.events.kafka import (
    EventDeliveryError,
    EventProducer,
    KafkaConfigError,
    TopicAdmin,
    TopicMisconfigured,
)
from wflo_jupyter.events.relay import OutboxRelay

__all__ = [
    "ConsumedEvent",
    "EventConsumer",
    "EventDeliveryError",
    "EventProducer",
    "InvalidMessage",
    "KafkaConfigError",
    "OutboxRelay",
    "TopicAdmin",
    "TopicMisconfigured",
]
