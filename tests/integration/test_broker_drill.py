"""The broker fault drill (issue 16): a 30-cell notebook that spends money runs while its
Kafka broker is stopped (SIGTERM, then SIGKILL) and started again a few seconds later,
and a kernel is SIGKILLed mid-notebook while the broker cannot take events.

Each time: no cell stalls on the broker; every event the ledger's outbox holds for the
session reaches Kafka (after deduplication by id, the set read back equals the outbox's;
after a broker SIGKILL, all but what the crashed broker itself had confirmed and lost),
in the order the outbox wrote them per topic; what a killed kernel left is delivered by
the standalone ``wflo relay``."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import wait_until
from tests.kernel_driver import Kernel
from tests.marks import LLM_KERNEL
from tests.outbox_reading import PrivateBroker, RelayProcess, read_messages
from wflo_jupyter.core.events import ALL_TOPICS
from wflo_jupyter.ledger.store import Ledger

pytestmark = [*LLM_KERNEL, pytest.mark.kafka]

CELLS = 30
STALL_S = 15.0  # a cell that waited this long on the broker stalled
CELL = (
    "%%wflo --budget 0.05 --name drill-{n}\n"
    "from openai import OpenAI\n"
    "OpenAI(max_retries=0).chat.completions.create(model='gpt-4o-mini', max_tokens=5,\n"
    "    messages=[{{'role': 'user', 'content': 'drill cell {n}'}}])\n"
    "print({n})\n"
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    private = PrivateBroker(tmp_path / "broker")
    yield private
    private.close()


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    opened = Ledger.connect(database_url)
    yield opened
    opened.close()


def _outbox(ledger: Ledger, session_id: str) -> list[tuple[int, str, str, bool]]:
    """The session's outbox rows in write order: (row id, event id, topic, sent)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, event_id, topic, sent_at IS NOT NULL FROM outbox "
                "WHERE envelope->>'session' = :s OR envelope->'payload'->>'session_id' = :s "
                "ORDER BY id"
            ),
            {"s": session_id},
        ).all()
    return [(int(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows]


def _sent_before(ledger: Ledger, event_ids: set[str], moment: datetime) -> set[str]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id FROM outbox WHERE sent_at < :t AND event_id = ANY(:ids)"),
            {"t": moment, "ids": list(event_ids)},
        ).all()
    return {str(r[0]) for r in rows}


def _now(ledger: Ledger) -> datetime:
    with ledger.engine.connect() as conn:
        return conn.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def _read_back(ledger: Ledger, bootstrap: str, session_id: str) -> tuple[set[str], set[str]]:
    """Once every outbox event of the session is marked sent: (the outbox's ids, the ids
    read back from Kafka, duplicates dropped). Per topic, what was read is in the
    outbox's order."""
    wait_until(
        lambda: all(sent for *_, sent in _outbox(ledger, session_id)),
        120,
        what="every event of the session marked sent",
    )
    rows = _outbox(ledger, session_id)
    position = {event_id: row_id for row_id, event_id, _, _ in rows}
    read_ids: set[str] = set()
    for topic in ALL_TOPICS:
        order: list[int] = []
        for _key, _headers, body in read_messages(bootstrap, topic):
            if body.get("id") not in position or body["id"] in read_ids:
                continue  # another session's, or a duplicate (at-least-once)
            read_ids.add(body["id"])
            order.append(position[body["id"]])
        assert order == sorted(order), f"{topic}: out of order"
    return set(position), read_ids


def _run_cells(kernel: Kernel, cells: range, between: Callable[[int], None]) -> list[float]:
    took: list[float] = []
    for n in cells:
        between(n)
        started = time.monotonic()
        run = kernel.run(CELL.format(n=n))
        took.append(time.monotonic() - started)
        assert run.status == "ok", (n, run.error)
        assert run.stdout == f"{n}\n" and run.stderr == "", (n, run.stderr)
    return took


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_notebook_rides_out_a_broker_restart(
    make_kernel: Callable[..., Kernel], broker: PrivateBroker, ledger: Ledger, signum: int
) -> None:
    """SIGTERM: every event reaches Kafka. SIGKILL: the local broker (noida-db) keeps its
    data in memory and saves it only when it shuts down, so a crash loses what it had
    confirmed; everything the relay sent after the restart reaches Kafka, and the relay
    gets over the broker having forgotten its idempotent producer (librdkafka's fatal
    out-of-order-sequence error: a new producer takes over)."""
    kernel = make_kernel({"WFLO_KAFKA_BOOTSTRAP": broker.bootstrap, "WFLO_PROVIDER": "mock"})
    session_id = kernel.wflo_session_id()
    stopped: list[datetime] = []

    def fault(n: int) -> None:
        if n == 10:
            stopped.append(_now(ledger))
            broker.stop(signum)
        elif n == 14:  # a few seconds later
            broker.restart()

    took = _run_cells(kernel, range(CELLS), fault)
    assert max(took) < STALL_S, took  # the notebook never waits on the broker
    written, read = _read_back(ledger, broker.bootstrap, session_id)
    assert len(written) >= CELLS * 3  # started, completed and the call's events per cell
    if signum == signal.SIGTERM:
        assert read == written
    else:
        lost = written - read
        assert lost == _sent_before(ledger, lost, stopped[0])  # only what the crash took
        assert len(read) > len(written) // 2


def test_a_killed_kernels_events_are_delivered_by_wflo_relay(
    make_kernel: Callable[..., Kernel],
    broker: PrivateBroker,
    ledger: Ledger,
    database_url: str,
    tmp_path: Path,
) -> None:
    kernel = make_kernel({"WFLO_KAFKA_BOOTSTRAP": broker.bootstrap, "WFLO_PROVIDER": "mock"})
    session_id = kernel.wflo_session_id()
    _run_cells(kernel, range(5), lambda _n: None)
    broker.process.send_signal(signal.SIGSTOP)  # it cannot take events now
    try:
        _run_cells(kernel, range(5, 10), lambda _n: None)
        process = kernel.manager.provisioner.process  # type: ignore[union-attr]
        process.kill()  # SIGKILL mid-notebook: its relay dies with it
        process.wait(timeout=30)
        kernel.wflo_loaded = False  # nothing to unload: shut down only
    finally:
        broker.process.send_signal(signal.SIGCONT)
    assert not all(sent for *_, sent in _outbox(ledger, session_id))  # it left some
    relay = RelayProcess(
        database_url, tmp_path / "relay.log", WFLO_KAFKA_BOOTSTRAP=broker.bootstrap
    )
    try:
        relay.wait_ready()
        written, read = _read_back(ledger, broker.bootstrap, session_id)
        assert read == written
        assert len(written) >= 10 * 3
    finally:
        assert relay.terminate() == 0
