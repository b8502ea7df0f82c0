"""``OutboxRelay``: moves the ledger's outbox to Kafka, promptly and once.

One relay per database publishes: the leader, which holds the ledger's relay lock
(``ledger.outbox.OutboxSeat``); every other relay (each kernel has one, plus any number
of ``wflo relay`` processes) stands by and takes over when the leader's session ends or
its heartbeat is older than the lease. The leader wakes on the outbox trigger's NOTIFY,
sends the unsent rows in id order (the event id in the ``wflo-event-id`` header and in
the body), and marks each row sent as soon as its delivery report arrives. ``stop``
drains: what is in the outbox when it is called is published (by this relay when it
leads, else by the leader) within a bounded time; rows still unconfirmed then stay
unsent, so across faults delivery is at-least-once and nothing is lost.

With ``validate=True`` (``WFLO_VALIDATE_EVENTS=1``, set for the test suite) every envelope
is checked against its schema (``events.schemas``) before it is sent: a violation is
logged and counted in ``invalid``, and the event is published all the same (a relay
never drops an event nor stops on one).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.events import ALL_TOPICS
from wflo_jupyter.events.kafka import (
    EVENT_ID_HEADER,
    Delivery,
    EventDeliveryError,
    EventProducer,
    TopicAdmin,
    TopicMisconfigured,
)
from wflo_jupyter.ledger.outbox import OutboxSeat
from wflo_jupyter.ledger.store import Ledger, OutboxEvent
from wflo_jupyter.stack.settings import Settings

if TYPE_CHECKING:
    from wflo_jupyter.events.schemas import EventSchemas

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
DEFAULT_DRAIN_S = 5.0
_TICK_S = 0.1  # longest wait between looks at the stop flag
_STANDBY_S = 0.5  # how often a standby relay looks at the leader
_RETRY_S = 1.0  # pause after a failed delivery or a lost database connection


@dataclass(frozen=True)
class TopicPlan:
    """How the event topics are created, and what an existing one must match."""

    partitions: int = 3
    replication: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms)}


def _line(exc: BaseException) -> str:
    """The first line of an error (psycopg's messages run over several)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def default_holder(kind: str) -> str:
    """How a relay names itself in ``outbox_relay``: kind, host, pid and a nonce."""
    return f"{kind} {socket.gethostname()} pid={os.getpid()} {uuid.uuid4().hex[:6]}"


class OutboxRelay:
    """Relays the ledger's outbox to Kafka from a background thread (``start``/``stop``)
    or in the caller's thread (``run``, ``drain``)."""

    def __init__(
        self,
        ledger: Ledger,
        bootstrap: str,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        drain_s: float = DEFAULT_DRAIN_S,
        holder: str | None = None,
        batch_size: int = 500,
        max_in_flight: int = 2000,
        topics: TopicPlan | None = None,
        producer: EventProducer | None = None,
        validate: bool = False,
    ) -> None:
        self.ledger = ledger
        self.bootstrap = bootstrap
        self.lease_s = lease_s
        self.drain_s = drain_s
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.seat = OutboxSeat(ledger.engine, holder or default_holder("kernel"))
        self.published = 0  # rows this relay saw confirmed and marked sent
        self.invalid = 0  # envelopes that did not match their schema (``validate``)
        self._schemas: EventSchemas | None = None
        if validate:  # jsonschema is imported only by relays that validate
            from wflo_jupyter.events.schemas import EventSchemas

            self._schemas = EventSchemas()
        self._producer = producer or EventProducer(bootstrap)
        self.topics = topics or TopicPlan()
        self._topics_ready = False
        self._topics_retry_at = 0.0
        self._in_flight: dict[int, OutboxEvent] = {}
        self._reports: list[tuple[int, Delivery | EventDeliveryError]] = []
        self._unmarked: list[int] = []  # confirmed, but marking them sent failed
        self._retry_at = 0.0
        self._last_beat = 0.0
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_settings(
        cls, ledger: Ledger, bootstrap: str, settings: Settings, holder: str
    ) -> OutboxRelay:
        """A relay with the ``WFLO_RELAY_*`` and ``WFLO_KAFKA_*`` settings."""
        return cls(
            ledger,
            bootstrap,
            lease_s=settings.relay_lease_s,
            drain_s=settings.relay_drain_s,
            holder=holder,
            topics=TopicPlan(
                settings.kafka_partitions, settings.kafka_replication, settings.kafka_retention_ms
            ),
            validate=settings.validate_events,
        )

    @property
    def holder(self) -> str:
        return self.seat.holder

    @property
    def leading(self) -> bool:
        return self.seat.leading

    @property
    def in_flight(self) -> int:
        """Rows sent and not yet reported on."""
        return len(self._in_flight)

    # -- one turn of the loop -----------------------------------------------------------------
    def prepare_topics(self, timeout_s: float = 10.0) -> list[str]:
        """Create the event topics that are missing and check the others against the plan
        (``TopicMisconfigured``: one line; ``EngineUnavailable``); returns those created."""
        admin = TopicAdmin(self.bootstrap, timeout_s=max(0.5, min(10.0, timeout_s)))
        created = admin.ensure_configured(
            sorted(ALL_TOPICS),
            partitions=self.topics.partitions,
            replication=self.topics.replication,
            config=self.topics.config(),
        )
        self._topics_ready = True
        return created

    def _ensure_topics(self, timeout_s: float) -> bool:
        """Whether the topics are ready. Until they are, nothing is sent: a broker that
        does not answer, or a topic configured otherwise than planned, is said once and
        checked again later (the rows wait in the outbox meanwhile)."""
        if self._topics_ready:
            return True
        if time.monotonic() < self._topics_retry_at:
            return False
        try:
            self.prepare_topics(timeout_s)
            return True
        except WfloError as exc:
            wrong = isinstance(exc, TopicMisconfigured)
            self._topics_retry_at = time.monotonic() + (30.0 if wrong else _RETRY_S)
            if not self._failing:
                log.log(logging.ERROR if wrong else logging.WARNING, "outbox relay: %s", _line(exc))
                self._failing = True
            return False

    def _check(self, row: OutboxEvent) -> None:
        """Validate ``row``'s envelope when asked to: a violation is logged and counted,
        never raised (the row is published all the same)."""
        if self._schemas is None:
            return
        try:
            self._schemas.validate(json.loads(row.payload))
        except Exception as exc:  # EventSchemaError, or a body that is not JSON
            self.invalid += 1
            log.error("outbox relay: event %s (row %d): %s", row.event_id, row.row_id, _line(exc))

    def _report(self, row_id: int) -> Callable[[Delivery | EventDeliveryError], None]:
        return lambda outcome: self._reports.append((row_id, outcome))

    def _fill(self) -> int:
        """Send the oldest unsent rows not yet out while fewer than ``max_in_flight`` are."""
        if time.monotonic() < self._retry_at:
            return 0
        sent = 0
        while (room := self.max_in_flight - len(self._in_flight)) > 0:
            limit = len(self._in_flight) + min(room, self.batch_size)
            ids = self.seat.unsent_ids(limit)
            new = [i for i in ids if i not in self._in_flight][:room]
            for row in self.seat.rows(new) if new else []:
                self._check(row)
                headers = {EVENT_ID_HEADER: row.event_id}
                while not self._producer.send(
                    row.topic, row.key, row.payload, headers, self._report(row.row_id)
                ):
                    self._producer.poll(0.01)  # the local queue is full
                    self._settle()
                self._in_flight[row.row_id] = row
                sent += 1
            if len(ids) < limit or not new:
                break
        return sent

    def _settle(self) -> None:
        """Mark the rows whose delivery reports arrived: sent, or failed (retried later)."""
        reports, self._reports = self._reports, []
        failed: list[tuple[int, str]] = []
        for row_id, outcome in reports:
            self._in_flight.pop(row_id, None)
            if isinstance(outcome, EventDeliveryError):
                failed.append((row_id, str(outcome)))
            else:
                self._unmarked.append(row_id)
        if self._unmarked:
            done = self._unmarked
            self.seat.mark_sent(done)  # raises on a lost connection: kept for the next try
            self._unmarked = []
            self.published += len(done)
        if failed:
            self.seat.mark_failed(failed)
            if not self._failing:
                log.warning("outbox relay: delivery failed (%s); retrying", failed[0][1])
                self._failing = True
            self._retry_at = time.monotonic() + _RETRY_S
        elif reports and self._failing:
            log.info("outbox relay: deliveries confirmed again")
            self._failing = False

    def _turn(self, wait_s: float, standby_s: float) -> None:
        """Lead if possible (else stand by for ``standby_s``); as the leader, beat, send,
        and serve delivery reports, waiting up to ``wait_s`` for a NOTIFY when idle."""
        seat = self.seat
        if not seat.leading:
            self._settle()  # reports of a lost term still mark their rows
            if not seat.try_lead():
                if seat.end_stuck_leader(self.lease_s):
                    log.warning("outbox relay: ended a relay leader stuck past its lease")
                time.sleep(standby_s)
                return
            log.info("outbox relay %s leads", self.holder)
            self._last_beat = 0.0
        now = time.monotonic()
        if now - self._last_beat >= self.lease_s / 5:
            seat.beat()
            self._last_beat = now
        sent = self._fill() if self._ensure_topics(wait_s) else 0
        if self._in_flight:  # poll returns as soon as a report is served
            self._producer.poll(0 if sent else wait_s)
        self._settle()
        if self._producer.fatal is not None:
            self._renew_producer()
        if not sent and not self._in_flight:
            seat.wait(wait_s)

    def _renew_producer(self) -> None:
        """The producer failed for good (librdkafka's fatal error: a broker that lost an
        idempotent producer's sequence in a crash): its undelivered rows are failed (sent
        again later, at least once) and a new producer takes over."""
        log.warning(
            "outbox relay: the Kafka producer failed for good (%s); starting a new one",
            self._producer.fatal,
        )
        self._producer = self._producer.renewed()  # purged: reports of the lost rows
        self._settle()
        lost = [(row_id, "producer failed") for row_id in self._in_flight]
        if lost:
            self.seat.mark_failed(lost)
        self._in_flight.clear()
        self._retry_at = time.monotonic() + _RETRY_S

    # -- running ------------------------------------------------------------------------------
    def run(self, until: threading.Event) -> None:
        """Relay until ``until`` is set. Errors are logged once per run of them (the
        rows stay unsent) and retried; a lost database connection gives up the lead."""
        failing = False
        while not until.is_set():
            try:
                self._turn(_TICK_S, _STANDBY_S)
                if failing:
                    log.info("outbox relay: working again")
                    failing = False
            except Exception as exc:
                if not failing:
                    log.warning("outbox relay: %s; trying again every %g s", _line(exc), _RETRY_S)
                    failing = True
                self.seat.close()
                until.wait(_RETRY_S)

    def start(self) -> None:
        """Relay in a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="wflo-outbox-relay", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Ask the relay to look at the outbox now (the NOTIFY trigger also does)."""
        self.seat.poke()

    def drain(self, timeout_s: float | None = None) -> int:
        """Until every row in the outbox now is sent, or ``timeout_s`` (default: the
        drain time) passes: publish as the leader, or wait for the leader (taking over
        if it goes). Returns how many rows this relay confirmed meanwhile."""
        timeout_s = self.drain_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        before = self.published
        try:
            last = self.seat.last_id()
            while (left := deadline - time.monotonic()) > 0:
                self._turn(min(0.05, left), min(0.05, left))
                if not self._in_flight and self.seat.unsent_up_to(last) == 0:
                    break
        except Exception as exc:
            log.warning("outbox relay: draining stopped: %s", _line(exc))
        return self.published - before

    def relay_once(self, timeout_s: float = 30.0) -> int:
        """Publish every unsent row (``drain``); returns how many were confirmed."""
        return self.drain(timeout_s)

    def stop(self, drain_s: float | None = None) -> None:
        """Stop relaying after draining for up to ``drain_s`` (default: the drain time);
        the lead is released. Rows left unconfirmed stay unsent (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)
        if thread is None or not thread.is_alive():
            self.drain(drain_s)
        else:
            log.warning("outbox relay: the relay thread did not stop; not draining")
        left = len(self._in_flight)
        self._producer.close(timeout_s=0)
        self.seat.close()
        if left:
            log.warning("outbox relay: %d events unconfirmed at stop stay in the outbox", left)
