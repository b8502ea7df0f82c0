"""``OutboxRelay``: moves outbox rows to Kafka, marking rows sent only after the broker
confirmed delivery. The event id travels as the ``event_id`` header (idempotency key)."""

from __future__ import annotations

import logging
import threading

from wflo_jupyter.core.events import TOPIC_BY_PREFIX
from wflo_jupyter.events.kafka import EventDeliveryError, EventProducer, TopicAdmin
from wflo_jupyter.ledger.store import Ledger

log = logging.getLogger(__name__)


class OutboxRelay:
    """Relays the ledger's outbox to Kafka, on demand or from a background thread."""

    def __init__(self, ledger: Ledger, bootstrap: str, *, batch_size: int = 500) -> None:
        self.ledger = ledger
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self._producer = EventProducer(bootstrap)
        self._topics_ready = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_topics(self) -> None:
        if not self._topics_ready:
            TopicAdmin(self.bootstrap).ensure(sorted(set(TOPIC_BY_PREFIX.values())))
            self._topics_ready = True

    def relay_once(self) -> int:
        """Publish every unsent outbox row; returns how many were confirmed."""
        with self._lock:
            self.ensure_topics()
            total = 0
            while True:
                batch = self.ledger.unsent_events(self.batch_size)
                if not batch:
                    return total
                outcomes = self._producer.publish_many(
                    [(e.topic, e.key, e.payload, {"event_id": e.event_id}) for e in batch]
                )
                sent = [
                    e.row_id
                    for e, o in zip(batch, outcomes, strict=True)
                    if not isinstance(o, EventDeliveryError)
                ]
                self.ledger.mark_sent(sent)
                total += len(sent)
                for event, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, EventDeliveryError):
                        self.ledger.mark_failed(event.row_id, str(outcome))
                if len(sent) < len(batch):
                    return total

    def wake(self) -> None:
        """Ask the background loop to relay now (called after a ledger write)."""
        self._wake.set()

    def start(self, interval_s: float = 1.0) -> None:
        """Relay in a daemon thread until ``stop``."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.relay_once()
                except Exception as exc:  # keep relaying; the rows stay unsent
                    log.warning("outbox relay: %s", exc)
                self._wake.wait(interval_s)
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="wflo-outbox-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._producer.close()
