"""Kafka side of the event stream: topics, producer, consumer and the outbox relay."""

from wflo_jupyter.events.kafka import (
    EventConsumer,
    EventDeliveryError,
    EventProducer,
    KafkaConfigError,
    TopicAdmin,
    TopicMisconfigured,
)
from wflo_jupyter.events.relay import OutboxRelay

__all__ = [
    "EventConsumer",
    "EventDeliveryError",
    "EventProducer",
    "KafkaConfigError",
    "OutboxRelay",
    "TopicAdmin",
    "TopicMisconfigured",
]
