"""``StepOutputChannel``: a step's live output from a ``wflo worker`` to the kernel whose
cell started it, over Redis pub/sub (channel ``wflo:step-output:{step_id}``).

Why Redis pub/sub: every kernel and worker already has the Redis client (the cache), a
message reaches a subscriber in well under a millisecond, and order holds from one
publisher's connection to a subscriber. Output is live progress, not a record (the result
and the ledger are): a message published while nobody listens is dropped, which is what
a cell whose kernel went away wants. The kernel subscribes before it starts the workflow,
so nothing the step prints is missed. Kafka would add a topic per deployment and a
consumer group per cell; Temporal updates would put every printed line into the history.

Messages are JSON ``[kind, a, b]`` (``OutputEvent`` tuples: stream, display, notice); the
worker ends each ``execute`` attempt with ``["end", null, null]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

END = "end"


def channel_name(step_id: str) -> str:
    return f"wflo:step-output:{step_id}"


class StepOutputPublisher:
    """The worker's side for one step: publishes each output event as it happens."""

    def __init__(self, client: redis.Redis, step_id: str) -> None:
        self._client = client
        self._channel = channel_name(step_id)

    def publish(self, kind: str, first: Any, second: Any) -> None:
        """Never raises: output that cannot be sent is logged (the result still is)."""
        try:
            self._client.publish(self._channel, json.dumps([kind, first, second]))
        except (redis.RedisError, TypeError, ValueError) as exc:
            log.warning("step output %s not sent: %s", kind, exc)

    def end(self) -> None:
        self.publish(END, None, None)


class StepOutputSubscription:
    """The kernel's side for one step: a thread hands each message to ``deliver``
    (``(kind, a, b)``) until ``close``; ``ended`` is set by each ``end`` message."""

    def __init__(
        self, client: redis.Redis, step_id: str, deliver: Callable[[tuple[Any, ...]], None]
    ) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._deliver = deliver
        self._stop = threading.Event()
        self.ended = threading.Event()
        self._pubsub.subscribe(channel_name(step_id))
        self._await_subscribed()
        self._thread = threading.Thread(
            target=self._read, name=f"wflo-output-{step_id[:8]}", daemon=True
        )
        self._thread.start()

    def _await_subscribed(self, timeout_s: float = 5.0) -> None:
        """Wait for Redis to confirm the subscription (nothing published after it is
        missed); the confirmation itself is not delivered."""
        self._pubsub.ignore_subscribe_messages = False
        try:
            message = self._pubsub.get_message(timeout=timeout_s)
            while message is not None and message["type"] != "subscribe":
                message = self._pubsub.get_message(timeout=timeout_s)
        finally:
            self._pubsub.ignore_subscribe_messages = True

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.RedisError, ValueError) as exc:
                if not self._stop.is_set():
                    log.warning("step output subscription lost: %s", exc)
                return
            if message is None or message.get("type") != "message":
                continue
            try:
                kind, first, second = json.loads(message["data"])
            except (TypeError, ValueError) as exc:
                log.warning("step output message not understood: %s", exc)
                continue
            if kind == END:
                self.ended.set()
                continue
            self.ended.clear()
            try:
                self._deliver((kind, first, second))
            except Exception:
                log.exception("delivering step output failed")

    def close(self, settle_s: float = 0.0) -> None:
        """Stop; with ``settle_s``, first wait up to that long for the worker's ``end``
        (output published just before the result may still be on its way)."""
        if settle_s:
            self.ended.wait(settle_s)
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(redis.RedisError):
            self._pubsub.close()


class StepOutputChannel:
    """Step output over one Redis client (a worker's or a kernel's)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publisher(self, step_id: str) -> StepOutputPublisher:
        return StepOutputPublisher(self.client, step_id)

    def subscribe(
        self, step_id: str, deliver: Callable[[tuple[Any, ...]], None]
    ) -> StepOutputSubscription:
        return StepOutputSubscription(self.client, step_id, deliver)
