"""Events benchmark: the outbox relay's throughput and latency against a raw producer.

    python bench/events.py [--events 20000] [--latency-events 300] [--rounds 3]

Engines: ``WFLO_DATABASE_URL`` / ``WFLO_KAFKA_BOOTSTRAP`` when set, else the local stack
(started on demand, Kafka included). Runs on its own database (created, dropped).

- **throughput**: ``--events`` outbox rows are written in one statement; the time from
  its commit until an ``OutboxRelay`` (leader, started before) has marked every one sent,
  against a raw confluent-kafka producer sending the same payloads and headers to the
  same topic and flushing (``baseline``). Rounds alternate; the printed ratio is the median of the
  per-round ratios (relay events/s over raw events/s).
- **latency**: ``--latency-events`` single-row transactions, 20 ms apart, with the relay
  idle in between: commit -> marked sent (the row's ``sent_at - created_at``, both on
  the database clock) and commit -> an outside consumer's receipt (this process's
  clock), p50 / p95; beside it a raw producer's send -> receipt (same acks and linger).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy import text

from wflo_jupyter.events import OutboxRelay, TopicAdmin
from wflo_jupyter.events.kafka import EVENT_ID_HEADER
from wflo_jupyter.ledger.store import Ledger, drop_database, with_database
from wflo_jupyter.stack.settings import Settings, resolve_endpoints

TOPIC = "wflo.steps"
INSERT = text(
    "WITH e AS (SELECT gen_random_uuid()::text AS id, n FROM generate_series(1, :count) AS n) "
    "INSERT INTO outbox (event_id, event_type, topic, key, envelope) "
    "SELECT e.id, 'step.started', 'wflo.steps', CAST(:s AS text), jsonb_build_object("
    "'id', e.id, 'type', 'step.started', 'key', CAST(:s AS text), "
    "'occurred_at', now()::text, 'payload', jsonb_build_object("
    "'session_id', CAST(:s AS text), 'seq', e.n, 'name', 'bench', 'status', 'running')) "
    "FROM e ORDER BY e.n RETURNING id"
)


def _unsent(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")).one()[0])


def _write(ledger: Ledger, count: int) -> list[int]:
    with ledger.engine.begin() as conn:
        return [int(r[0]) for r in conn.execute(INSERT, {"count": count, "s": str(uuid.uuid4())})]


def relay_throughput(ledger: Ledger, count: int) -> float:
    _write(ledger, count)
    started = time.perf_counter()  # from the commit: the relay wakes on its NOTIFY
    while _unsent(ledger):
        time.sleep(0.002)
    return count / (time.perf_counter() - started)


def raw_throughput(ledger: Ledger, bootstrap: str, count: int) -> float:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, key, envelope::text FROM outbox ORDER BY id DESC LIMIT :n"),
            {"n": count},
        ).all()
    payloads = [(r[1], r[2].encode(), r[0]) for r in reversed(rows)]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "log_level": 0,
        }
    )
    started = time.perf_counter()
    for key, value, event_id in payloads:
        while True:
            try:
                producer.produce(
                    TOPIC,
                    key=key.encode(),
                    value=value,
                    headers=[(EVENT_ID_HEADER, event_id.encode())],
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    return count / (time.perf_counter() - started)


class Receipts:
    """An outside consumer at the topic's end: when each event id arrived."""

    def __init__(self, bootstrap: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        meta = self._consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        ends = []
        for p in meta:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
            ends.append(TopicPartition(TOPIC, p, high))
        self._consumer.assign(ends)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            for name, value in message.headers() or []:
                if name == EVENT_ID_HEADER:
                    self.seen[value.decode()] = time.time()

    def wait(self, event_id: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while event_id not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(event_id)
            time.sleep(0.0005)
        return self.seen[event_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(ledger: Ledger, bootstrap: str, count: int) -> dict[str, list[float]]:
    receipts = Receipts(bootstrap)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2, "log_level": 0}
    )
    to_consumer: list[float] = []
    raw: list[float] = []
    ids: list[int] = []
    try:
        for _ in range(count):
            (row_id,) = _write(ledger, 1)
            committed = time.time()
            ids.append(row_id)
            with ledger.engine.connect() as conn:
                event_id = conn.execute(
                    text("SELECT event_id FROM outbox WHERE id = :i"), {"i": row_id}
                ).scalar_one()
            to_consumer.append((receipts.wait(event_id) - committed) * 1000)
            raw_id = str(uuid.uuid4())
            sent = time.time()
            producer.produce(TOPIC, b"raw", b"{}", headers=[(EVENT_ID_HEADER, raw_id.encode())])
            producer.poll(0)
            raw.append((receipts.wait(raw_id) - sent) * 1000)
            time.sleep(0.02)
        producer.flush(10)
    finally:
        receipts.close()
    with ledger.engine.connect() as conn:
        marked = [
            float(r[0]) * 1000
            for r in conn.execute(
                text(
                    "SELECT extract(epoch FROM sent_at - created_at) FROM outbox "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        ]
    return {"commit -> marked sent": marked, "commit -> consumer": to_consumer, "raw": raw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    endpoints = resolve_endpoints(Settings.from_env(), need_kafka=True)
    assert endpoints.kafka_bootstrap is not None
    bootstrap = endpoints.kafka_bootstrap
    url = with_database(endpoints.database_url, f"wflo_bench_events_{uuid.uuid4().hex[:8]}")
    TopicAdmin(bootstrap).ensure([TOPIC])
    ledger = Ledger.connect(url)
    relay = OutboxRelay(ledger, bootstrap)
    try:
        relay.start()
        while not relay.leading:
            time.sleep(0.01)
        relay_throughput(ledger, 1000)  # warm up
        ratios, relay_rates, raw_rates = [], [], []
        for _ in range(args.rounds):
            relay_rate = relay_throughput(ledger, args.events)
            raw_rate = raw_throughput(ledger, bootstrap, args.events)
            relay_rates.append(relay_rate)
            raw_rates.append(raw_rate)
            ratios.append(relay_rate / raw_rate)
        print(f"throughput over {args.events} events, {args.rounds} rounds (median):")
        print(f"  raw producer (baseline)  {statistics.median(raw_rates):>10,.0f} events/s")
        print(f"  outbox relay             {statistics.median(relay_rates):>10,.0f} events/s")
        print(f"  relay / raw              {statistics.median(ratios):>10.2f}x")
        results = latency(ledger, bootstrap, args.latency_events)
        print(f"latency over {args.latency_events} single-event transactions (ms):")
        for name, values in results.items():
            label = "raw send -> consumer (baseline)" if name == "raw" else name
            print(f"  {label:<32} p50 {_pct(values, 0.5):7.1f}   p95 {_pct(values, 0.95):7.1f}")
    finally:
        relay.stop()
        ledger.close()
        drop_database(url)


if __name__ == "__main__":
    main()
