"""The ledger against real PostgreSQL: migrations, models, relationships, steps, outbox."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from tests.helpers import start_step, wait_until
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.ledger.models import OutboxRow, SessionRow, StepRow
from wflo_jupyter.ledger.outbox import OutboxSeat
from wflo_jupyter.ledger.store import Ledger, drop_database, ensure_database, with_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def ledger(fresh_database_url: str):
    ledger = Ledger.connect(fresh_database_url)
    yield ledger
    ledger.close()


def _start(ledger: Ledger, session_id: str, name: str = "cell") -> str:
    return start_step(ledger, session_id, name)[1]


def test_database_is_created_when_missing(database_url: str) -> None:
    url = with_database(database_url, f"wflo_new_{uuid.uuid4().hex[:8]}")
    assert ensure_database(url) is True
    assert ensure_database(url) is False
    ledger = Ledger.connect(url)
    try:
        assert ledger.current_revision() == "0008_envelope_v2"
    finally:
        ledger.close()
        drop_database(url)


def test_migrations_upgrade_and_downgrade(fresh_database_url: str) -> None:
    ledger = Ledger.connect(fresh_database_url, migrate=False)
    try:
        assert ledger.current_revision() is None
        ledger.migrate()
        tables = set(inspect(ledger.engine).get_table_names())
        assert {"sessions", "steps", "outbox", "alembic_version"} <= tables
        ledger.migrate()  # idempotent
        ledger.downgrade("base")
        assert not {"sessions", "steps", "outbox"} & set(inspect(ledger.engine).get_table_names())
        ledger.migrate()
        assert ledger.current_revision() == "0008_envelope_v2"
    finally:
        ledger.close()


def test_schema_matches_models(ledger: Ledger) -> None:
    columns = {c["name"] for c in inspect(ledger.engine).get_columns("steps")}
    assert columns == set(StepRow.__table__.columns.keys())
    money = {
        c["name"]: c["type"].__class__.__name__ for c in inspect(ledger.engine).get_columns("steps")
    }
    assert money["cost_micros"] == "BIGINT"
    assert money["budget_micros"] == "BIGINT"


def test_step_lifecycle_writes_outbox_in_same_transaction(ledger: Ledger) -> None:
    session_id = str(uuid.uuid4())
    ledger.open_session(session_id, kernel_id="k1", notebook_path="nb.ipynb", pid=123)
    step_id = _start(ledger, session_id)
    row = ledger.step(step_id)
    assert row is not None
    assert row.status == "running"
    assert row.seq == 1
    ledger.finish_step(
        StepResult(
            step_id=step_id,
            status="failed",
            exit_code=1,
            exit_reason="error",
            error_name="ZeroDivisionError",
            error_value="division by zero",
            sandbox_seconds=0.25,
        )
    )
    row = ledger.step(step_id)
    assert row is not None
    assert row.status == "failed"
    assert row.error == "ZeroDivisionError: division by zero"
    assert row.sandbox_ms == 250
    assert row.duration_ms is not None
    assert row.duration_ms >= 0
    events = ledger.unsent_events()
    assert [e.topic for e in events] == ["wflo.steps", "wflo.steps"]
    assert all(e.key == step_id for e in events)
    types = [e.payload for e in events]
    assert b'"type":"step.started"' in types[0]
    assert b'"type":"step.failed"' in types[1]


def test_finish_is_idempotent(ledger: Ledger) -> None:
    session_id = str(uuid.uuid4())
    ledger.open_session(session_id)
    step_id = _start(ledger, session_id)
    done = StepResult(step_id=step_id, status="completed", exit_code=0, exit_reason="ok")
    ledger.finish_step(done)
    ledger.finish_step(done)
    # start_step is idempotent too (a retried activity must not duplicate a step)
    ledger.start_step(
        step_id=step_id,
        session_id=session_id,
        name="cell",
        code="x",
        budget_micros=None,
        workflow_id="w",
        image="i",
    )
    assert len(ledger.steps(session_id)) == 1
    assert len(ledger.unsent_events()) == 2


def test_relationships_and_ordering(ledger: Ledger) -> None:
    session_id = str(uuid.uuid4())
    ledger.open_session(session_id)
    ids = [_start(ledger, session_id, name=f"c{i}") for i in range(3)]
    with Session(ledger.engine) as db:
        session = db.get(SessionRow, session_id)
        assert session is not None
        assert [s.id for s in session.steps] == ids
        assert [s.seq for s in session.steps] == [1, 2, 3]
        assert session.steps[0].session.id == session_id


def test_crud_and_cascade(ledger: Ledger) -> None:
    session_id = str(uuid.uuid4())
    ledger.open_session(session_id)
    step_id = _start(ledger, session_id)
    with Session(ledger.engine) as db, db.begin():
        step = db.get(StepRow, step_id)
        assert step is not None
        step.name = "renamed"
    assert (ledger.step(step_id) or StepRow()).name == "renamed"
    with Session(ledger.engine) as db, db.begin():
        db.delete(db.get(SessionRow, session_id))
    assert ledger.step(step_id) is None
    ledger.close_session(session_id)  # closing an unknown session is harmless


def test_unknown_step_cannot_finish(ledger: Ledger) -> None:
    with pytest.raises(KeyError, match="unknown step"):
        ledger.finish_step(
            StepResult(step_id="nope", status="completed", exit_code=0, exit_reason="ok")
        )


def test_mark_sent_and_failed(ledger: Ledger) -> None:
    session_id = str(uuid.uuid4())
    ledger.open_session(session_id)
    _start(ledger, session_id)
    (event,) = ledger.unsent_events()
    seat = OutboxSeat(ledger.engine, "test")
    try:
        seat.mark_failed([(event.row_id, "broker down")])
        with Session(ledger.engine) as db:
            row = db.scalar(select(OutboxRow).where(OutboxRow.id == event.row_id))
            assert row is not None
            assert row.attempts == 1
            assert row.last_error == "broker down"
        assert seat.unsent_ids(10) == [event.row_id]
        assert seat.rows([event.row_id])[0].event_id == event.event_id
        seat.mark_sent([event.row_id])
    finally:
        seat.close()
    assert ledger.unsent_events() == []
    with ledger.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")).scalar()
            == 1
        )


def test_an_outbox_insert_wakes_a_listening_seat(ledger: Ledger) -> None:
    """Migration 0007's trigger notifies ``wflo_outbox`` when an outbox insert commits."""
    seat = OutboxSeat(ledger.engine, "test")
    try:
        seat.wait(0)  # the first wait after connecting is woken: rows may predate LISTEN
        assert seat.wait(0) is False
        start_step(ledger)
        assert seat.wait(30) is True
    finally:
        seat.close()


def test_one_seat_leads_per_database(ledger: Ledger) -> None:
    """The leader lock is exclusive; closing the leader's seat releases it at once; a
    standby ends a leader whose heartbeat is older than the lease, and only then."""
    first, second = OutboxSeat(ledger.engine, "first"), OutboxSeat(ledger.engine, "second")
    try:
        assert first.try_lead() is True
        assert second.try_lead() is False
        leader = second.leader()
        assert leader is not None and leader[0] == "first"
        assert second.end_stuck_leader(3600) is False
        with ledger.engine.begin() as conn:
            conn.execute(text("UPDATE outbox_relay SET beat_at = now() - interval '1 hour'"))
        assert second.end_stuck_leader(30) is True
        wait_until(second.try_lead, 30, what="the ended leader's lock to be released")
        first.close()
        assert first.try_lead() is False  # a new connection; the lead is taken
    finally:
        first.close()
        second.close()


def test_concurrent_migrations_are_serialised(fresh_database_url: str) -> None:
    import threading

    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            Ledger.connect(fresh_database_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
