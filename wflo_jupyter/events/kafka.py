"""Small classes over confluent-kafka: ``TopicAdmin`` and ``EventProducer`` (the consumer is
``events.consumer.EventConsumer``).

Each is built with a bootstrap address, validates its librdkafka configuration up
front (unknown property names are a ``KafkaConfigError``, not a silent no-op), and
closes cleanly as a context manager.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from wflo_jupyter.core.errors import EngineUnavailable, WfloError, one_line
from wflo_jupyter.core.events import Event

EVENT_ID_HEADER = "wflo-event-id"  # the event's id, for consumers to deduplicate by


class KafkaConfigError(WfloError):
    """A Kafka client was given a configuration librdkafka rejects."""


class TopicMisconfigured(WfloError):
    """A topic exists with a configuration other than the one wanted; it is not used."""


class EventDeliveryError(WfloError):
    """The broker did not confirm delivery of one or more messages."""


def kafka_client(factory: Any, config: Mapping[str, Any]) -> Any:
    """``factory(config)`` (a confluent-kafka client class); a configuration librdkafka
    rejects is a ``KafkaConfigError`` whose one line names the property."""
    try:
        return factory(dict(config))
    except (KafkaException, ValueError, TypeError) as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.str() if isinstance(reason, KafkaError) else str(reason)
        raise KafkaConfigError(f"Kafka configuration rejected: {one_line(text)}") from None


def quiet_config(config: dict[str, Any]) -> dict[str, Any]:
    # Connection errors are reported through our exceptions, not librdkafka's stderr log.
    config.setdefault("log_level", 0)
    return config


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored one message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


class _ClosesOnExit:
    """Context-manager protocol for clients with an idempotent ``close``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TopicAdmin:
    """Create, list and inspect topics."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._admin = kafka_client(AdminClient, quiet_config({"bootstrap.servers": bootstrap}))

    def names(self) -> list[str]:
        """Names of the user topics (internal ``__*`` topics left out)."""
        try:
            metadata = self._admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise EngineUnavailable(f"Kafka at {self.bootstrap}: {exc.args[0]}") from None
        return sorted(t for t in metadata.topics if not t.startswith("__"))

    def exists(self, name: str) -> bool:
        return name in self.names()

    def ensure(
        self,
        names: Sequence[str],
        *,
        partitions: int = 3,
        replication: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Create the topics that do not exist yet; returns the names created."""
        missing = [n for n in names if not self.exists(n)]
        if not missing:
            return []
        futures = self._admin.create_topics(
            [
                NewTopic(
                    n,
                    num_partitions=partitions,
                    replication_factor=replication,
                    config=dict(config or {}),
                )
                for n in missing
            ],
            operation_timeout=self.timeout_s,
        )
        created = []
        for name, future in futures.items():
            try:
                future.result(self.timeout_s)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise EngineUnavailable(f"Kafka: cannot create {name}: {exc.args[0]}") from None
        return sorted(created)

    def mismatches(
        self, name: str, *, partitions: int, config: Mapping[str, str] | None = None
    ) -> list[str]:
        """How the existing topic ``name`` differs from ``partitions`` and ``config``."""
        found: list[str] = []
        have = self.partitions(name)
        if have != partitions:
            found.append(f"{have} partitions, not {partitions}")
        if config:
            actual = self.config(name)
            for key, wanted in sorted(config.items()):
                if actual.get(key) != str(wanted):
                    found.append(f"{key}={actual.get(key)}, not {wanted}")
        return found

    def ensure_configured(
        self,
        names: Sequence[str],
        *,
        partitions: int,
        replication: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> list[str]:
        """``ensure`` the topics, then check every one: a topic that exists with other
        partitions or configuration raises ``TopicMisconfigured`` (one line naming the
        topics and the differences). Returns the names created."""
        created = self.ensure(names, partitions=partitions, replication=replication, config=config)
        wrong = []
        for name in names:
            found = self.mismatches(name, partitions=partitions, config=config)
            if found:
                wrong.append(f"{name} has {', '.join(found)}")
        if wrong:
            raise TopicMisconfigured(
                f"Kafka topic {'; '.join(wrong)} (at {self.bootstrap}): fix or delete it; "
                "its events stay in the outbox meanwhile"
            )
        return created

    def partitions(self, name: str) -> int:
        # Asking for one topic's metadata may auto-create it on some brokers: list all.
        metadata = self._admin.list_topics(timeout=self.timeout_s)
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            raise KeyError(f"no topic {name!r}")
        return len(topic.partitions)

    def config(self, name: str) -> dict[str, str]:
        """The topic's configuration entries (``retention.ms``, ``cleanup.policy``, ...)."""
        futures = self._admin.describe_configs([ConfigResource("topic", name)])
        (future,) = futures.values()
        entries = future.result(self.timeout_s)
        return {key: str(entry.value) for key, entry in entries.items()}


class EventProducer(_ClosesOnExit):
    """Publishes messages and confirms their delivery (acks=all, idempotent)."""

    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        config: dict[str, Any] = quiet_config(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 30_000,
            }
        )
        config.update({k.replace("_", "."): v for k, v in overrides.items()})
        self.bootstrap = bootstrap
        self._overrides = overrides
        # a fatal error (e.g. an idempotence sequence the broker lost in a crash) ends
        # this producer for good: ``fatal`` says why, and ``renewed`` makes a new one
        self.fatal: str | None = None
        config.setdefault("error_cb", self._on_error)
        self._producer: Any = kafka_client(Producer, config)
        self._closed = False

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() == KafkaError._FATAL:
            self.fatal = self.fatal or one_line(error.str())

    def renewed(self) -> EventProducer:
        """A new producer with this one's settings (this one is closed, its undelivered
        messages dropped: their reports say so)."""
        self.purge()
        self.close(timeout_s=0)
        return EventProducer(self.bootstrap, **self._overrides)

    def send(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Mapping[str, str],
        on_done: Callable[[Delivery | EventDeliveryError], None],
    ) -> bool:
        """Queue one message; ``on_done`` gets its delivery report from a later ``poll``.
        False when the local queue is full (``poll``, then send it again)."""
        if self._closed:
            raise EventDeliveryError("producer is closed")

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._on_error(err)
                on_done(EventDeliveryError(f"{msg.topic()}: {err.str()}"))
            else:
                on_done(
                    Delivery(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key())
                )

        try:
            self._producer.produce(
                topic,
                key=key.encode(),
                value=value,
                headers=[(k, v.encode()) for k, v in headers.items()],
                on_delivery=on_delivery,
            )
        except BufferError:
            return False
        except KafkaException as exc:
            if isinstance(exc.args[0], KafkaError):
                self._on_error(exc.args[0])
            on_done(EventDeliveryError(f"{topic}: {exc.args[0]}"))
        return True

    def poll(self, timeout_s: float) -> int:
        """Serve delivery reports for up to ``timeout_s``; returns how many were served
        (a fatal error raised here is kept in ``fatal``)."""
        try:
            return int(self._producer.poll(timeout_s))
        except KafkaException as exc:
            if not (isinstance(exc.args[0], KafkaError) and exc.args[0].fatal()):
                raise
            self._on_error(exc.args[0])
            return 0

    def in_flight(self) -> int:
        """Messages sent but not yet reported on."""
        return len(self._producer)

    def purge(self) -> None:
        """Drop the messages not yet delivered (their reports say purged)."""
        self._producer.purge()
        self._producer.poll(0)

    def publish_many(
        self,
        messages: Sequence[tuple[str, str, bytes, Mapping[str, str]]],
        *,
        timeout_s: float = 30.0,
    ) -> list[Delivery | EventDeliveryError]:
        """Send ``(topic, key, value, headers)`` messages; wait for each delivery report.

        Returns, in order, a ``Delivery`` or the ``EventDeliveryError`` for each message.
        """
        outcomes: list[Delivery | EventDeliveryError | None] = [None] * len(messages)

        def report(index: int) -> Callable[[Delivery | EventDeliveryError], None]:
            return lambda outcome: outcomes.__setitem__(index, outcome)

        for index, (topic, key, value, headers) in enumerate(messages):
            while not self.send(topic, key, value, headers, report(index)):
                self._producer.poll(0.1)
        deadline = time.monotonic() + timeout_s
        while any(o is None for o in outcomes) and time.monotonic() < deadline:
            self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        return [
            o if o is not None else EventDeliveryError("delivery not confirmed in time")
            for o in outcomes
        ]

    def publish(self, event: Event, *, timeout_s: float = 30.0) -> Delivery:
        """Publish one event to its topic (keyed by subject, event id in a header)."""
        (outcome,) = self.publish_many(
            [(event.topic, event.key, event.to_json(), {EVENT_ID_HEADER: event.id})],
            timeout_s=timeout_s,
        )
        if isinstance(outcome, EventDeliveryError):
            raise outcome
        return outcome

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush for up to ``timeout_s``; what is still undelivered then is dropped."""
        if not self._closed:
            self._closed = True
            if self._producer.flush(timeout_s):
                self.purge()
