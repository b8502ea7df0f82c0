"""What the relay tests share: reading a topic as an outside client, writing outbox rows
in bulk, ``wflo relay`` as a process, and a Kafka broker of a test's own.

A topic is read by confluent-kafka's own consumer: the partitions are assigned and read up
to their high watermarks, so every message in the topic is seen, duplicates included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import text

from tests.helpers import wait_until
from wflo_jupyter.core.events import TOPIC_STEPS
from wflo_jupyter.events import OutboxRelay, TopicAdmin
from wflo_jupyter.events.kafka import EVENT_ID_HEADER
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.stack.binaries import find_binary

WFLO = [sys.executable, "-m", "wflo_jupyter.cli"]


@dataclass(frozen=True)
class Seen:
    """One message of the topic."""

    header_id: str | None
    body_id: str
    key: str
    session_id: str
    type: str


def read_messages(bootstrap: str, topic: str) -> list[tuple[str, dict[str, Any], Any]]:
    """Every message now in ``topic`` as (key, headers, decoded body): each partition read
    from its start to its high watermark (no consumer group membership, nothing committed).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"outside-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        read: list[tuple[str, dict[str, Any], Any]] = []
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if message.offset() >= ends.get(message.partition(), -1) - 1:
                ends.pop(message.partition(), None)
            headers = dict(message.headers() or [])
            key = (message.key() or b"").decode()
            read.append((key, headers, json.loads(message.value() or b"null")))
        assert not ends, f"partitions not read to their end: {ends}"
        return read
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str = TOPIC_STEPS) -> list[Seen]:
    """Every message now in ``topic`` (``read_messages``), as ``Seen``."""
    seen: list[Seen] = []
    for key, headers, body in read_messages(bootstrap, topic):
        header = headers.get(EVENT_ID_HEADER)
        seen.append(
            Seen(
                header_id=header.decode() if header else None,
                body_id=body["id"],
                key=key,
                session_id=str(body["payload"].get("session_id")),
                type=body["type"],
            )
        )
    return seen


def of_sessions(seen: list[Seen], sessions: set[str]) -> list[Seen]:
    return [s for s in seen if s.session_id in sessions]


def outbox_ids(ledger: Ledger, sessions: set[str], topic: str = TOPIC_STEPS) -> set[str]:
    """The ids of the outbox's events of ``sessions`` bound for ``topic``."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, envelope FROM outbox WHERE topic = :topic"), {"topic": topic}
        ).all()
    return {r[0] for r in rows if r[1]["payload"].get("session_id") in sessions}


def unsent(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")).one()[0])


def bulk_events(ledger: Ledger, count: int) -> str:
    """``count`` step.started events of a new session (valid against their schema), in one
    statement."""
    session_id = str(uuid.uuid4())
    with ledger.engine.begin() as conn:
        conn.execute(
            text(
                "WITH e AS (SELECT gen_random_uuid()::text AS id, n "
                "FROM generate_series(1, :count) AS n) "
                "INSERT INTO outbox (event_id, event_type, topic, key, envelope) "
                "SELECT e.id, 'step.started', 'wflo.steps', CAST(:s AS text), jsonb_build_object("
                "'id', e.id, 'type', 'step.started', 'key', CAST(:s AS text), 'occurred_at', now(), "
                "'payload', jsonb_build_object('step_id', e.id, 'session_id', CAST(:s AS text), "
                "'name', 'bulk', 'seq', e.n, 'workflow_id', NULL)) "
                "FROM e ORDER BY e.n"
            ),
            {"count": count, "s": session_id},
        )
    return session_id


class RelayProcess:
    """``wflo relay`` on a database, its output in a file."""

    def __init__(self, database_url: str, log: Path, **env: str) -> None:
        self.log = log
        full = {**os.environ, "WFLO_DATABASE_URL": database_url, **env}
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*WFLO, "relay"], env=full, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        """Until it relays (its signal handlers are set by then)."""
        wait_until(lambda: "outbox -> Kafka" in self.output(), 60, what="wflo relay to start")

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> int:
        os.kill(self.pid, signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)


def leader_holder(relay: OutboxRelay) -> str:
    leader = relay.seat.leader()
    return leader[0] if leader else ""


class PrivateBroker:
    """A noida-db Kafka broker of this test's own, which it may stop and continue."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.bootstrap = f"127.0.0.1:{port}"
        self.argv = [str(find_binary("kafka")), "start", "--only", "kafka", "--host", "127.0.0.1"]
        self.argv += ["--kafka-port", str(port), "--data-dir", str(directory)]
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: TopicAdmin(self.bootstrap, timeout_s=1).names() is not None, 30)

    def stop(self, signum: int) -> None:
        """End it with ``signum`` (SIGTERM: its own shutdown; SIGKILL: none)."""
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.send_signal(signum)
        self.process.wait(timeout=30)

    def restart(self) -> None:
        """Start it again at the same address, on the same data."""
        self._start()

    def close(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=30)
