"""The suite's event audit (``tests/event_audit.py``) on a real ledger: it reads every
outbox row of a database and reports each envelope that does not match its schema, or
whose type is not its row's, on one line; a database without a ledger is skipped."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url, text

from tests.event_audit import EventAudit
from tests.helpers import start_step
from wflo_jupyter.core.events import STEP_COMPLETED, STEP_STARTED, Event
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

INSERT = text(
    "INSERT INTO outbox (event_id, event_type, topic, key, envelope) "
    "VALUES (:id, :type, 'wflo.steps', 'k', CAST(:envelope AS jsonb)) RETURNING id"
)


def test_the_audit_reports_each_bad_envelope_and_passes_the_ledgers_own(
    fresh_database_url: str,
) -> None:
    ledger = Ledger.connect(fresh_database_url)
    try:
        start_step(ledger)  # a real step.started, written by the ledger
        [good_payload] = [e["payload"] for e in ledger.recent_events(5)]
        bad = Event(STEP_STARTED, key="k", payload={"step_id": "s", "seq": 1})
        other = Event(STEP_COMPLETED, key="k", payload={})
        with ledger.engine.begin() as conn:
            bad_row = conn.execute(
                INSERT, {"id": bad.id, "type": bad.type, "envelope": bad.to_json().decode()}
            ).scalar_one()
            mislabelled_row = conn.execute(  # a step.completed envelope in a step.started row
                INSERT, {"id": other.id, "type": STEP_STARTED, "envelope": other.to_json().decode()}
            ).scalar_one()
            old = Event(STEP_STARTED, key="k", payload=dict(good_payload), version=1)
            old_row = conn.execute(  # a writer of an older version than the current one
                INSERT, {"id": old.id, "type": old.type, "envelope": old.to_json().decode()}
            ).scalar_one()
        audit = EventAudit()
        audit.check_database(fresh_database_url)
        name = make_url(fresh_database_url).database
        assert audit.checked == {"step.started": 4}
        assert audit.violations == [
            f"{name} outbox row {bad_row}: step.started v2 at payload: "
            "'session_id' is a required property",
            f"{name} outbox row {mislabelled_row}: envelope type is not the row's 'step.started'",
            f"{name} outbox row {old_row}: step.started written at version 1, not the current 2",
        ]
    finally:
        with ledger.engine.begin() as conn:  # the session's own audit checks this database too
            conn.execute(text("DELETE FROM outbox WHERE envelope ->> 'key' = 'k'"))
        ledger.close()
    clean = EventAudit()
    clean.check_database(fresh_database_url)
    assert (clean.checked.total(), clean.violations, clean.databases) == (1, [], 1)


def test_a_database_without_a_ledger_is_skipped(database_url: str) -> None:
    """The server's ``postgres`` database has no outbox: nothing checked, nothing wrong."""
    url = make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    audit = EventAudit()
    audit.check_database(url)
    assert (audit.databases, audit.checked.total(), audit.violations) == (0, 0, [])
