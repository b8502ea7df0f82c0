"""``EventConsumer``: reads wflo events from Kafka as a member of a consumer group.

It owns subscribing (by default to every wflo topic, read from
``core.events.ALL_TOPICS``), decoding each message and checking it against its
schema (``events.schemas``), optional deduplication by event id, iteration with an idle
timeout, and committing offsets.

Decoding never stops the stream: a message that is not JSON, not an event, or does not
match its type's schema is yielded as an ``InvalidMessage`` (where it is and why, on one
line), and the next message follows. Valid ones are ``ConsumedEvent`` s.

Commit semantics (at-least-once): an item's offset is *stored* when the caller asks for
the next item, calls ``commit()``, or leaves the ``with`` block without an exception; it
is never stored for an item whose handling raised. Stored offsets are committed to the
group by librdkafka every ``auto.commit.interval.ms`` (5 s), synchronously by
``commit()``, and when the consumer closes. A consumer that dies mid-item therefore gets
that item again (in its group), and so may see events it had handled since the last
commit: deduplicate by id (``dedupe=N``) where that matters. The relay delivers
at-least-once too; every event carries its id for that reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from wflo_jupyter.core.errors import EngineUnavailable, WfloError, one_line
from wflo_jupyter.core.events import ALL_TOPICS, Event
from wflo_jupyter.events.kafka import KafkaConfigError, kafka_client, quiet_config

if TYPE_CHECKING:
    from wflo_jupyter.events.schemas import EventSchemas

log = logging.getLogger(__name__)

_POLL_S = 0.2  # longest single poll: iteration notices its deadlines this often
_JOIN_S = 30.0  # longest wait for the group to assign partitions before idle time counts
# Errors a consumer rides out: the end of a partition, a topic not created yet (the
# consumer picks it up on its next metadata refresh).
_BENIGN = {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART}


def wflo_topics() -> list[str]:
    """Every topic wflo publishes events to."""
    return sorted(ALL_TOPICS)


@dataclass(frozen=True)
class ConsumedEvent:
    """A valid event and where it was read."""

    topic: str
    partition: int
    offset: int
    key: str | None  # the Kafka key: the event's session (else its subject)
    envelope: dict[str, Any]  # the body as received (fields of newer envelopes kept)
    event: Event

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def session(self) -> str | None:
        """The session the event belongs to: the envelope's ``session``, else the payload's
        ``session_id``, else the Kafka key."""
        for value in (self.envelope.get("session"), self.event.payload.get("session_id")):
            if isinstance(value, str) and value:
                return value
        return self.key

    def in_session(self, session: str) -> bool:
        """Whether the event belongs to ``session`` (by envelope, payload or key)."""
        candidates = (
            self.envelope.get("session"),
            self.event.payload.get("session_id"),
            self.key,
        )
        return session in candidates


@dataclass(frozen=True)
class InvalidMessage:
    """A message that is not a valid wflo event, and why."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    reason: str

    def line(self) -> str:
        """``wflo.steps[2]@41: step.started v1 at payload.seq: ...``: one line."""
        return f"{self.topic}[{self.partition}]@{self.offset}: {self.reason}"


Received = ConsumedEvent | InvalidMessage


class _RecentIds:
    """The last ``size`` event ids seen: membership in O(1), memory bounded by ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` is among the remembered ids; remembers it either way."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


def _decode_key(message: Message) -> str | None:
    key = message.key()
    if key is None:
        return None
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def _envelope_version(envelope: Mapping[str, Any]) -> int | None:
    """The schema version to validate against: the envelope's ``version`` (v2 and later),
    1 for an envelope without one (v1), ``None`` (the newest) for a malformed one."""
    version = envelope.get("version", 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class EventConsumer:
    """Reads events from topics as a member of consumer group ``group_id``; use it as a
    context manager (a consumer killed without leaving its group wedges the group's
    partitions until the session timeout).

    ``topics`` defaults to every wflo topic. ``from_beginning`` decides where a group
    without committed offsets starts: the oldest retained message, else only new ones.
    ``validate`` checks each event against its schema; ``dedupe=N`` skips an event whose
    id is among the last N ids yielded (0: off). Other librdkafka properties go in
    ``overrides`` (``session_timeout_ms=...`` means ``session.timeout.ms``); an unknown
    property or a bad value is a one-line ``KafkaConfigError`` naming it.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str | None,
        topics: Sequence[str] | None = None,
        *,
        from_beginning: bool = True,
        validate: bool = True,
        dedupe: int = 0,
        **overrides: Any,
    ) -> None:
        if not group_id or not group_id.strip():
            # librdkafka aborts the process on an empty group.id: refuse it here.
            raise KafkaConfigError("Kafka consumer: group.id is required (a consumer group name)")
        if dedupe < 0:
            raise KafkaConfigError(f"Kafka consumer: dedupe must be >= 0, got {dedupe}")
        config: dict[str, Any] = quiet_config(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,  # stored once handled: see the module doc
                "session.timeout.ms": 10_000,
                # a subscribed topic created later is picked up within seconds
                "topic.metadata.refresh.interval.ms": 5_000,
            }
        )
        config.update({k.replace("_", "."): v for k, v in overrides.items()})
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = list(topics) if topics else wflo_topics()
        self.duplicates = 0  # events skipped by ``dedupe``
        self.invalid = 0  # messages yielded as ``InvalidMessage``
        self._schemas: EventSchemas | None = None
        if validate:  # jsonschema is imported only by consumers that validate
            from wflo_jupyter.events.schemas import EventSchemas

            self._schemas = EventSchemas()
        self._recent = _RecentIds(dedupe) if dedupe else None
        self._pending: Message | None = None  # yielded, its offset not stored yet
        self._consumer: Any = kafka_client(Consumer, config)
        self._consumer.subscribe(self.topics)
        self._closed = False

    # -- connection -------------------------------------------------------------------------
    def check(self, timeout_s: float = 10.0) -> list[str]:
        """Ask the broker for metadata: ``EngineUnavailable`` (one line) if none answers;
        returns the subscribed topics that do not exist yet (read once created)."""
        try:
            metadata = self._consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            text = error.str() if isinstance(error, KafkaError) else str(error)
            raise EngineUnavailable(f"Kafka at {self.bootstrap}: {one_line(text)}") from None
        return [t for t in self.topics if t not in metadata.topics]

    # -- reading ----------------------------------------------------------------------------
    def _next_message(self, timeout_s: float) -> Message | None:
        """One message within ``timeout_s``, benign errors skipped; a fatal error raises
        ``EngineUnavailable``, others are logged and waited out."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            message: Message | None = self._consumer.poll(max(0.0, min(_POLL_S, left)))
            if message is not None:
                error = message.error()
                if error is None:
                    return message
                if error.fatal():
                    raise EngineUnavailable(f"Kafka consumer: {one_line(error.str())}")
                if error.code() not in _BENIGN:
                    log.warning("Kafka consumer: %s", one_line(error.str()))
            if left <= 0:
                return None

    def _decode(self, message: Message) -> Received:
        value = message.value() or b""
        where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        key = _decode_key(message)
        try:
            try:
                envelope = json.loads(value)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise ValueError(f"not JSON: {exc}") from None
            if not isinstance(envelope, dict):
                raise ValueError(f"not a wflo event: a JSON {type(envelope).__name__}")
            if self._schemas is not None:
                self._schemas.validate(envelope, _envelope_version(envelope))
            event = Event.from_json(value)
        except (ValueError, WfloError) as exc:  # WfloError: EventSchemaError
            self.invalid += 1
            return InvalidMessage(*where, key, value, one_line(str(exc))[:500])
        return ConsumedEvent(*where, key, envelope, event)

    def _store_pending(self) -> None:
        if self._pending is not None:
            self._consumer.store_offsets(message=self._pending)
            self._pending = None

    def poll(self, timeout_s: float) -> Received | None:
        """The next event or invalid message within ``timeout_s``, else ``None``. Asking
        stores the offset of the item returned before (it counts as handled)."""
        self._store_pending()
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._next_message(max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            item = self._decode(message)
            if (
                isinstance(item, ConsumedEvent)
                and self._recent is not None
                and self._recent.seen(item.id)
            ):
                self.duplicates += 1
                self._consumer.store_offsets(message=message)
                continue
            self._pending = message
            return item

    def read(self, idle_s: float | None = None, limit: int | None = None) -> Iterator[Received]:
        """Yield items until ``idle_s`` seconds pass without one (``None``: follow for
        ever) or ``limit`` items were yielded. Idle time counts once the group has given
        this consumer its partitions (joining takes seconds), or after ``_JOIN_S``."""
        count = 0
        join_by = time.monotonic() + _JOIN_S
        while limit is None or count < limit:
            item = self.poll(_POLL_S if idle_s is None else idle_s)
            if item is None:
                joining = not self._consumer.assignment() and time.monotonic() < join_by
                if idle_s is None or joining:
                    continue
                return
            count += 1
            yield item

    def __iter__(self) -> Iterator[Received]:
        return self.read()

    # -- raw access (tests, tools reading their own topics) --------------------------------
    def messages(self, timeout_s: float) -> Iterator[Message]:
        """Raw messages until ``timeout_s`` has passed in all; no decoding, no dedup, each
        offset stored as it is yielded."""
        self._store_pending()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self._next_message(min(_POLL_S, left))
            if message is not None:
                self._consumer.store_offsets(message=message)
                yield message

    def events(self, timeout_s: float) -> Iterator[Event]:
        """Parsed events (no schema check) until ``timeout_s`` has passed in all; a message
        that is not an event raises ``ValueError``."""
        for message in self.messages(timeout_s):
            yield Event.from_json(message.value() or b"")

    def wait_for(self, predicate: Callable[[Event], bool], timeout_s: float = 30.0) -> Event:
        """The first event for which ``predicate(event)`` is true, else ``TimeoutError``."""
        for event in self.events(timeout_s):
            if predicate(event):
                return event
        raise TimeoutError(f"no matching event within {timeout_s:g} s")

    # -- offsets and closing ----------------------------------------------------------------
    def commit(self) -> None:
        """Store the last item's offset and commit the group's stored offsets now."""
        self._store_pending()
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing new to commit
                raise EngineUnavailable(f"Kafka commit: {one_line(exc.args[0].str())}") from None

    def close(self, *, handled: bool = True) -> None:
        """Leave the group, committing stored offsets (and the last item's, if
        ``handled``); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if handled:
                self._store_pending()
        finally:
            self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(handled=exc_type is None)
