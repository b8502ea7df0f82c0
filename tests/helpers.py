"""Small builders shared by the integration tests."""

from __future__ import annotations

import uuid

from wflo_jupyter.ledger.store import Ledger


def start_step(
    ledger: Ledger, session_id: str | None = None, name: str = "cell"
) -> tuple[str, str]:
    """Record a running step (opening a new session when none is given); returns
    ``(session_id, step_id)``."""
    if session_id is None:
        session_id = str(uuid.uuid4())
        ledger.open_session(session_id)
    step_id = str(uuid.uuid4())
    ledger.start_step(
        step_id=step_id,
        session_id=session_id,
        name=name,
        code="print(1)",
        budget_micros=100_000,
        workflow_id=f"wf-{step_id}",
        image="img",
    )
    return session_id, step_id
