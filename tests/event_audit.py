"""Every event the test suite produces, checked against its schema.

``EventAudit`` reads the whole outbox of a database (the session's ledger database and
each test's own one, just before they are dropped) and validates every envelope with
``wflo_jupyter.events.schemas`` at the version it names, which must be its type's current
one (``core.events.SCHEMA_VERSION``); a body that names none is a version 1 body (a test
that ran the ledger at a revision before 0008 wrote it) and is checked against v1;
``tests/conftest.py`` turns any violation into a failed run at the end of the session."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from wflo_jupyter.core.events import SCHEMA_VERSION
from wflo_jupyter.events.schemas import EventSchemaError, EventSchemas


@dataclass
class EventAudit:
    """What the session's outboxes held: how many envelopes were checked, and each
    violation on one line (database, outbox row, error)."""

    schemas: EventSchemas = field(default_factory=EventSchemas)
    checked: Counter[str] = field(default_factory=Counter)  # envelopes, by event type
    databases: int = 0
    violations: list[str] = field(default_factory=list)

    def check_database(self, url: str) -> None:
        """Validate every outbox row of the database at ``url`` (one without the ledger's
        tables has none). A row whose ``event_type`` column disagrees with its envelope's
        ``type`` is a violation too."""
        name = make_url(url).database
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                if conn.execute(text("SELECT to_regclass('outbox')")).scalar() is None:
                    return
                rows = conn.execute(
                    text("SELECT id, event_type, envelope FROM outbox ORDER BY id")
                ).all()
        except SQLAlchemyError as exc:  # not checked is not passed
            self.violations.append(f"{name}: outbox not read: {str(exc).splitlines()[0]}")
            return
        finally:
            engine.dispose()
        self.databases += 1
        for row_id, event_type, envelope in rows:
            self.checked[str(event_type)] += 1
            try:
                if not isinstance(envelope, dict) or envelope.get("type") != event_type:
                    raise EventSchemaError(f"envelope type is not the row's {event_type!r}")
                current = SCHEMA_VERSION.get(str(event_type))
                if "version" in envelope and envelope["version"] != current:
                    raise EventSchemaError(
                        f"{event_type} written at version {envelope.get('version')!r}, "
                        f"not the current {current!r}"
                    )
                self.schemas.validate(envelope)
            except EventSchemaError as exc:
                self.violations.append(f"{name} outbox row {row_id}: {exc}")


# where the session's audit is kept (``tests/conftest.py`` makes it; a test with a database
# of its own, outside the fixtures, adds it with ``pytestconfig.stash[EVENT_AUDIT]``)
EVENT_AUDIT = pytest.StashKey[EventAudit]()
