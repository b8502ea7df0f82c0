"""The outbox relay against a real broker and Postgres: prompt, once in normal operation,
at-least-once across faults, a bounded drain, and a standby that takes over.

Kafka is read by confluent-kafka's own consumer as an outside client would read it
(``tests/outbox_reading.py``: every message in the topic, duplicates included). Relays run in this process (``OutboxRelay``, as a
kernel runs it) and as ``wflo relay`` processes, each test on a database of its own (the
leader lock is per database)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import start_step, wait_until
from tests.kernel_driver import Kernel
from tests.outbox_reading import (
    WFLO,
    PrivateBroker,
    RelayProcess,
    bulk_events,
    leader_holder,
    of_sessions,
    outbox_ids,
    read_topic,
    unsent,
)
from wflo_jupyter.core.events import STEP_STARTED, TOPIC_STEPS, Event
from wflo_jupyter.events import OutboxRelay, TopicAdmin, TopicMisconfigured
from wflo_jupyter.events.relay import TopicPlan
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.kafka]


@pytest.fixture
def ledger(fresh_database_url: str, kafka_bootstrap: str) -> Iterator[Ledger]:
    TopicAdmin(kafka_bootstrap).ensure([TOPIC_STEPS])
    ledger = Ledger.connect(fresh_database_url)
    yield ledger
    ledger.close()


# -- once in normal operation ---------------------------------------------------------
def test_two_relays_and_wflo_relay_publish_200_events_once(
    ledger: Ledger, fresh_database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Three relays on one database while 200 events are written from four threads:
    every event reaches the topic exactly once (the id in the header equals the body's)
    and every row is marked sent; SIGTERM ends ``wflo relay`` with exit status 0."""
    cli = RelayProcess(fresh_database_url, tmp_path / "relay.log")
    cli.wait_ready()
    relays = [OutboxRelay(ledger, kafka_bootstrap) for _ in range(2)]
    sessions: set[str] = set()
    try:
        for relay in relays:
            relay.start()

        def write(count: int) -> None:
            session_id, _ = start_step(ledger)
            sessions.add(session_id)
            for _ in range(count - 1):
                start_step(ledger, session_id)

        writers = [threading.Thread(target=write, args=(50,)) for _ in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        wait_until(lambda: unsent(ledger) == 0, 60, what="every row to be marked sent")
    finally:
        for relay in relays:
            relay.stop()
        status = cli.terminate()
    assert status == 0, cli.output()
    seen = of_sessions(read_topic(kafka_bootstrap), sessions)
    ids = [s.body_id for s in seen]
    assert len(ids) == 200
    assert len(set(ids)) == 200  # none published twice
    assert set(ids) == outbox_ids(ledger, sessions)
    assert all(s.header_id == s.body_id for s in seen)
    assert all(s.key == s.session_id for s in seen)  # one session's events: one partition


# -- at least once across faults ---------------------------------------------------------
def test_relay_killed_mid_batch_loses_nothing(
    ledger: Ledger, fresh_database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``wflo relay`` SIGKILLed while it publishes 20,000 rows: a relay started after it
    delivers the rest, and every event id is in the topic (duplicates allowed)."""
    total = 20_000
    session_id = bulk_events(ledger, total)
    cli = RelayProcess(fresh_database_url, tmp_path / "relay.log")
    try:
        wait_until(lambda: unsent(ledger) < total, 60, interval=0.005, what="a first send")
        cli.kill()
    finally:
        cli.kill()
    left = unsent(ledger)
    assert 0 < left < total, f"the relay was not killed mid-way ({left} left)"
    relay = OutboxRelay(ledger, kafka_bootstrap)
    try:
        relay.start()
        wait_until(lambda: unsent(ledger) == 0, 120, what="the rest to be sent")
    finally:
        relay.stop()
    seen = {s.body_id for s in of_sessions(read_topic(kafka_bootstrap), {session_id})}
    assert seen == outbox_ids(ledger, {session_id})
    assert len(seen) == total


def test_stopped_leader_is_replaced_after_its_lease(
    ledger: Ledger, fresh_database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The leading ``wflo relay`` is SIGSTOPped: a standby ends its session once the
    lease (2 s here) has passed, takes the lead and publishes the new events; the old
    leader, continued, stands by and exits 0 on SIGTERM."""
    cli = RelayProcess(fresh_database_url, tmp_path / "relay.log", WFLO_RELAY_LEASE_S="2")
    standby = OutboxRelay(ledger, kafka_bootstrap, lease_s=2.0)
    try:
        wait_until(
            lambda: f"pid={cli.pid} " in leader_holder(standby), 60, what="wflo relay to lead"
        )
        standby.start()
        os.kill(cli.pid, signal.SIGSTOP)
        session_id = bulk_events(ledger, 10)
        wait_until(lambda: unsent(ledger) == 0, 60, what="the standby to publish")
        assert leader_holder(standby) == standby.holder
        assert standby.leading
    finally:
        standby.stop()
        status = cli.terminate()
    assert status == 0, cli.output()
    assert "leads" in cli.output()
    seen = {s.body_id for s in of_sessions(read_topic(kafka_bootstrap), {session_id})}
    assert seen == outbox_ids(ledger, {session_id})


def test_standby_takes_over_when_the_leader_ends(ledger: Ledger, kafka_bootstrap: str) -> None:
    """A leader that stops releases the lead at once; the standby publishes what is
    written after, without waiting for a lease."""
    first = OutboxRelay(ledger, kafka_bootstrap, lease_s=3600)
    second = OutboxRelay(ledger, kafka_bootstrap, lease_s=3600)
    try:
        first.start()
        wait_until(lambda: first.leading, 30, what="the first relay to lead")
        second.start()
        first.stop()
        session_id = bulk_events(ledger, 5)
        wait_until(lambda: unsent(ledger) == 0, 30, what="the standby to publish")
        assert second.leading
    finally:
        first.stop()
        second.stop()
    seen = {s.body_id for s in of_sessions(read_topic(kafka_bootstrap), {session_id})}
    assert seen == outbox_ids(ledger, {session_id})


# -- schemas ---------------------------------------------------------------------------
def test_a_validating_relay_logs_and_counts_an_invalid_event_and_still_publishes_it(
    ledger: Ledger, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``validate=True`` (``WFLO_VALIDATE_EVENTS=1``) an envelope that does not match
    its schema is logged on one line naming the event, the type and the path, and counted;
    it is published all the same, and the valid ones around it pass unremarked."""
    session_id = bulk_events(ledger, 2)
    bad = Event(STEP_STARTED, key=session_id, payload={"session_id": session_id, "seq": 3})
    bad_id = bad.id
    with ledger.engine.begin() as conn:  # as Ledger._emit writes it, without a step id
        conn.execute(
            text(
                "INSERT INTO outbox (event_id, event_type, topic, key, envelope) "
                "VALUES (:id, :type, :topic, :key, CAST(:envelope AS jsonb))"
            ),
            {
                "id": bad.id,
                "type": bad.type,
                "topic": bad.topic,
                "key": bad.key,
                "envelope": bad.to_json().decode(),
            },
        )
    relay = OutboxRelay(ledger, kafka_bootstrap, validate=True)
    try:
        with caplog.at_level(logging.ERROR, logger="wflo_jupyter.events.relay"):
            assert relay.relay_once() == 3
    finally:
        relay.stop()
        # the invalid row is this test's own: the suite's audit checks what the product wrote
        with ledger.engine.begin() as conn:
            conn.execute(text("DELETE FROM outbox WHERE event_id = :id"), {"id": bad_id})
    assert relay.invalid == 1
    [line] = [r.getMessage() for r in caplog.records if " v2 at " in r.getMessage()]
    assert line == (
        f"outbox relay: event {bad_id} (row 3): "
        "step.started v2 at payload: 'step_id' is a required property"
    )
    seen = of_sessions(read_topic(kafka_bootstrap), {session_id})
    assert bad_id in {s.body_id for s in seen} and len(seen) == 3


# -- drain -----------------------------------------------------------------------------
def test_drain_with_a_dead_broker_is_bounded_and_loses_nothing(
    ledger: Ledger, kafka_bootstrap: str
) -> None:
    """A relay whose broker does not answer stops within its drain time plus a margin;
    the rows stay unsent and a relay with a live broker then delivers every one."""
    dead = OutboxRelay(ledger, "127.0.0.1:1", drain_s=2.0)
    dead.start()
    session_id = bulk_events(ledger, 5)
    wait_until(lambda: dead.leading, 30, what="the relay to lead")
    started = time.monotonic()
    dead.stop()
    assert time.monotonic() - started < 2.0 + 3.0
    assert unsent(ledger) == 5
    live = OutboxRelay(ledger, kafka_bootstrap)
    try:
        assert live.drain(60) == 5
    finally:
        live.stop()
    seen = [s.body_id for s in of_sessions(read_topic(kafka_bootstrap), {session_id})]
    assert sorted(seen) == sorted(outbox_ids(ledger, {session_id}))


def test_drain_with_a_hung_broker_is_bounded_and_loses_nothing(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The relay has published to its broker, then the broker hangs (SIGSTOP: its
    connections stay open and answer nothing) and five more events are written: the relay
    sends them, and ``stop`` returns within the drain time plus a margin, leaving the five
    rows unsent. Once the broker continues, a relay delivers them: nothing is lost."""
    broker = PrivateBroker(tmp_path / "kafka")
    try:
        relay = OutboxRelay(ledger, broker.bootstrap, drain_s=2.0)
        relay.start()
        first = bulk_events(ledger, 3)
        wait_until(lambda: unsent(ledger) == 0, 60, what="the first events to be sent")
        os.kill(broker.process.pid, signal.SIGSTOP)
        second = bulk_events(ledger, 5)
        wait_until(lambda: relay.in_flight == 5, 30, what="the relay to send them")
        started = time.monotonic()
        relay.stop()
        assert time.monotonic() - started < 2.0 + 3.0
        assert unsent(ledger) == 5
        os.kill(broker.process.pid, signal.SIGCONT)
        again = OutboxRelay(ledger, broker.bootstrap)
        try:
            again.drain(60)
        finally:
            again.stop()
        assert unsent(ledger) == 0
        seen = {s.body_id for s in read_topic(broker.bootstrap)}
        assert seen >= outbox_ids(ledger, {first, second})  # duplicates allowed, no loss
    finally:
        broker.close()


# -- topics ------------------------------------------------------------------------------
def test_a_topic_configured_otherwise_is_reported_not_used(
    ledger: Ledger,
    fresh_database_url: str,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The event topics exist with 3 partitions. A relay planned for 5 sends nothing and
    says why once in its log; ``wflo relay`` so configured exits 2 with one line naming
    the topics and the difference."""
    OutboxRelay(ledger, kafka_bootstrap).prepare_topics()  # the topics as planned by default
    session_id = bulk_events(ledger, 3)
    relay = OutboxRelay(ledger, kafka_bootstrap, topics=TopicPlan(partitions=5))
    with pytest.raises(TopicMisconfigured, match=r"wflo\.steps has 3 partitions, not 5"):
        relay.prepare_topics()
    try:
        with caplog.at_level(logging.INFO, logger="wflo_jupyter"):
            assert relay.drain(2) == 0
        assert relay.leading
    finally:
        relay.stop(drain_s=0)
    assert unsent(ledger) == 3
    said = [r for r in caplog.records if "3 partitions, not 5" in r.getMessage()]
    assert [r.levelname for r in said] == ["ERROR"]  # once, not on every turn
    cli = subprocess.run(
        [*WFLO, "relay"],
        env={**os.environ, "WFLO_DATABASE_URL": fresh_database_url, "WFLO_KAFKA_PARTITIONS": "5"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 2
    (line,) = [ln for ln in cli.stderr.splitlines() if "error:" in ln]
    assert "3 partitions, not 5" in line
    assert session_id not in {s.session_id for s in read_topic(kafka_bootstrap)}


# -- a notebook in a real kernel ---------------------------------------------------------
@pytest.mark.docker
@pytest.mark.temporal
@pytest.mark.kernel
def test_three_cell_notebook_events_are_on_kafka_when_the_kernel_exits(
    stack_env: dict[str, str], runtime_image: str, kafka_bootstrap: str, database_url: str
) -> None:
    """Three ``%%wflo`` cells, then the kernel is shut down: right after it has exited,
    its six step events are in ``wflo.steps``, each once, carrying its id in the header
    and the body. Nothing of the relay was printed into a cell; it logged to the kernel's
    log file."""
    kernel = Kernel()
    try:
        kernel.load_wflo()
        session_id = kernel.wflo_session_id()
        runs = [kernel.run(f"%%wflo --name relay-{i}\nx{i} = {i}\nprint(x{i})") for i in range(3)]
    finally:
        kernel.shutdown()  # a shutdown request: the interpreter exits, atexit drains
    assert not kernel.manager.is_alive()
    assert [r.stdout for r in runs] == ["0\n", "1\n", "2\n"]
    assert [r.stderr for r in runs] == ["", "", ""]
    seen = of_sessions(read_topic(kafka_bootstrap), {session_id})
    assert sorted(s.type for s in seen) == ["step.completed"] * 3 + ["step.started"] * 3
    assert len({s.body_id for s in seen}) == 6
    assert all(s.header_id == s.body_id for s in seen)
    assert {s.key for s in seen} == {session_id}
    ledger = Ledger.connect(database_url)
    try:
        assert {s.body_id for s in seen} == outbox_ids(ledger, {session_id})
    finally:
        ledger.close()
    log = (Path(stack_env["WFLO_HOME"]) / "logs" / "kernel.log").read_text()
    assert f"{session_id} leads" in log  # the kernel's relay led, and said so in its log
