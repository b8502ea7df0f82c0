"""Envelope v2 in the ledger (migration 0008): every outbox row carries ``version``,
``session`` and ``step``, whether Python or Postgres built it; the topics follow
``core.events``; unsent rows on the old topics are moved by the upgrade; and
``Ledger.record_events`` is the outbox API for state that is not in the ledger."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from tests.helpers import start_step
from wflo_jupyter.core.events import CACHE_CLEARED, Event
from wflo_jupyter.events.schemas import EventSchemas
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def rows(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(text("SELECT event_type, topic, envelope FROM outbox ORDER BY id"))
        )


def test_python_and_postgres_built_envelopes_carry_version_session_and_step(
    fresh_database_url: str,
) -> None:
    ledger = Ledger.connect(fresh_database_url)
    try:
        session_id, step_id = start_step(ledger)
        budgets = BudgetLedger(ledger.engine)
        budgets.set_budget("team", "ml", 1_000_000)
        budgets.set_budget("cell", step_id, 500_000)
        # Postgres builds a reservation's budget.updated (wflo_reserve): no version in it
        budgets.reserve([("cell", step_id), ("team", "ml")], 400_000, step_id=step_id)
        cleared = {"session_id": session_id, "scope": "all", "model": None, "notebook": None}
        ledger.record_events(
            [
                Event(
                    CACHE_CLEARED,
                    key=session_id,
                    payload={**cleared, "removed": 0},
                    session=session_id,
                )
            ]
        )
        found = rows(ledger)
    finally:
        ledger.close()
    schemas = EventSchemas()
    seen = []
    for event_type, topic, body in found:
        schemas.validate(body)
        seen.append((event_type, topic, body["version"], body["session"], body["step"]))
        if body["payload"].get("op") == "reserve":
            assert "version" in body and body["payload"]["step_id"] == step_id
    assert seen[0] == ("step.started", "wflo.steps", 2, session_id, step_id)
    assert ("budget.updated", "wflo.audit", 2, None, None) in seen  # the team budget, set
    assert ("budget.updated", "wflo.audit", 2, session_id, step_id) in seen  # the cell's
    reserved = [s for s in seen if s[1] == "wflo.costs"]
    assert reserved and all(s[2:] == (2, session_id, step_id) for s in reserved)
    assert seen[-1] == ("cache.cleared", "wflo.cache", 1, session_id, None)


def test_the_upgrade_moves_unsent_rows_off_the_old_topics(fresh_database_url: str) -> None:
    ledger = Ledger.connect(fresh_database_url)
    try:
        ledger.downgrade("0007_outbox_notify")
        insert = text(
            "INSERT INTO outbox (event_id, event_type, topic, key, envelope, sent_at) "
            "VALUES (:id, :type, :topic, 'k', CAST(:body AS jsonb), :sent)"
        )
        made = [
            ("llm.call", "wflo.llm", {}, None),
            ("budget.threshold", "wflo.budgets", {"threshold": 50}, None),
            ("budget.updated", "wflo.budgets", {"op": "settle"}, None),
            ("budget.updated", "wflo.budgets", {"op": "set"}, None),
            ("budget.updated", "wflo.budgets", {"op": "set"}, "2026-12-06T00:00:00Z"),
        ]
        with ledger.engine.begin() as conn:
            for event_type, topic, payload, sent in made:
                event = Event(event_type, key="k", payload=payload)
                body = {k: v for k, v in event.envelope().items() if k not in ("version",)}
                conn.execute(
                    insert,
                    {
                        "id": str(uuid.uuid4()),
                        "type": event_type,
                        "topic": topic,
                        "body": json.dumps(body),
                        "sent": sent,
                    },
                )
        ledger.migrate()
        assert ledger.current_revision() == "0008_envelope_v2"
        topics = [topic for _, topic, _ in rows(ledger)]
        with ledger.engine.begin() as conn:  # hand-made rows, not for the suite's audit
            conn.execute(text("DELETE FROM outbox"))
    finally:
        ledger.close()
    assert topics == ["wflo.costs", "wflo.costs", "wflo.costs", "wflo.audit", "wflo.budgets"]
