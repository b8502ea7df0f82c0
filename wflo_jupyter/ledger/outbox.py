"""``OutboxSeat``: a relay's own session on the ledger, for the relay leader lock.

One relay per database publishes (``docs/architecture.md``, "Events"): it holds the
session advisory lock ``RELAY_LOCK_KEY`` on this seat's dedicated connection, listens there
for ``wflo_outbox`` notifications (sent by migration 0007's trigger when an outbox insert
commits), reads unsent rows in id order and marks them sent. Everything goes through that
one connection, so a relay whose connection was ended (by ``pg_terminate_backend`` from a
standby, or a network failure) can neither read nor mark rows again until it has won the
lock anew. The leader records its backend pid and a heartbeat in ``outbox_relay``; a
standby may end a holder whose heartbeat is older than the lease.

The connection must be a real session (not a transaction-pooling proxy such as PgBouncer
in transaction mode): advisory locks and LISTEN belong to the session.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from wflo_jupyter.ledger.store import OutboxEvent

OUTBOX_CHANNEL = "wflo_outbox"
RELAY_LOCK_KEY = 0x77666C72  # "wflr"; the migration lock is "wflo"

_HOLDER = """
    SELECT l.pid, r.beat_at < now() - make_interval(secs => %(lease)s) AS stale
    FROM pg_locks AS l
    LEFT JOIN outbox_relay AS r ON r.backend_pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %(key)s
      AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


# The Kafka key of a row: the session of the event (its payload's ``session_id``, else the
# session of its step: the payload's ``step_id``, the row key of step and call events, or a
# cell budget's ``cell:<step id>``), else the row key (a team or notebook budget's scope).
_KAFKA_KEY = """coalesce(o.envelope #>> '{payload,session_id}', s.session_id, o.key)"""
_ROWS = f"""
    SELECT o.id, o.event_id, o.topic, {_KAFKA_KEY}, o.envelope::text
    FROM outbox AS o
    LEFT JOIN steps AS s ON s.id = coalesce(
        o.envelope #>> '{{payload,step_id}}',
        CASE WHEN o.key LIKE 'cell:%%' THEN substr(o.key, 6) ELSE o.key END)
    WHERE o.id = ANY(%s) ORDER BY o.id
"""


class OutboxSeat:
    """A relay's connection to the ledger; not thread-safe (one relay thread uses it)."""

    def __init__(self, engine: Engine, holder: str) -> None:
        self.engine = engine
        self.holder = holder
        self._conn: Any = None
        self._leading = False
        self._notified = threading.Event()

    # -- the connection ---------------------------------------------------------------------
    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._leading = False
            args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
            kwargs.pop("context", None)
            conn = psycopg.connect(*args, **kwargs, autocommit=True)
            conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            self._conn = conn
            self._notified.set()  # rows may have been written while nobody listened
        return self._conn

    def close(self) -> None:
        """Close the connection, which releases the lock if held."""
        self._leading = False
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @property
    def leading(self) -> bool:
        return self._leading and self._conn is not None and not self._conn.closed

    # -- leadership -------------------------------------------------------------------------
    def try_lead(self) -> bool:
        """Take the leader lock if nobody holds it; records this seat as the holder."""
        if self.leading:
            return True
        conn = self._connection()
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK_KEY,)).fetchone()[0]
        if got:
            conn.execute(
                "INSERT INTO outbox_relay (id, backend_pid, holder, beat_at) "
                "VALUES (1, pg_backend_pid(), %s, now()) ON CONFLICT (id) DO UPDATE SET "
                "backend_pid = EXCLUDED.backend_pid, holder = EXCLUDED.holder, beat_at = now()",
                (self.holder,),
            )
            self._leading = True
            self._notified.set()
        return bool(got)

    def beat(self) -> None:
        """Say that the leader is making progress."""
        self._connection().execute(
            "UPDATE outbox_relay SET beat_at = now() WHERE id = 1 AND backend_pid = "
            "pg_backend_pid()"
        )

    def end_stuck_leader(self, lease_s: float) -> bool:
        """End the lock holder's session when its heartbeat is older than ``lease_s``
        (its lock is released as its backend exits); True if one was ended."""
        conn = self._connection()
        row = conn.execute(_HOLDER, {"lease": lease_s, "key": RELAY_LOCK_KEY}).fetchone()
        if row is None or not row[1]:
            return False
        ended = conn.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],)).fetchone()
        return bool(ended and ended[0])

    def leader(self) -> tuple[str, float] | None:
        """``(holder, seconds since its last heartbeat)`` of the lock holder, if any."""
        row = (
            self._connection()
            .execute(
                "SELECT r.holder, extract(epoch FROM now() - r.beat_at)::float8 "
                "FROM outbox_relay AS r JOIN pg_locks AS l ON l.pid = r.backend_pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 "
                "AND l.objid = %s AND l.objsubid = 1",
                (RELAY_LOCK_KEY,),
            )
            .fetchone()
        )
        return (str(row[0]), float(row[1])) if row else None

    # -- waking -----------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for an outbox notification; True if one came (also
        one that arrived during an earlier query: psycopg keeps those in a backlog)."""
        conn = self._connection()
        if self._notified.is_set():
            self._notified.clear()
            list(conn.notifies(timeout=0))  # consume the backlog
            return True
        return bool(list(conn.notifies(timeout=timeout_s, stop_after=1)))

    def poke(self) -> None:
        """Make the next ``wait`` return at once."""
        self._notified.set()

    # -- rows -------------------------------------------------------------------------------
    def unsent_ids(self, limit: int) -> list[int]:
        """The ids of the oldest ``limit`` unsent rows (from the partial index alone).
        Ids are taken at insert and rows commit in any order, so a relay reads from the
        oldest unsent row each time, not from a cursor: a cursor would skip a row whose
        transaction committed after a newer one was read."""
        rows = (
            self._connection()
            .execute("SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s", (limit,))
            .fetchall()
        )
        return [int(r[0]) for r in rows]

    def rows(self, row_ids: Sequence[int]) -> list[OutboxEvent]:
        """The rows ``row_ids``, in id order, as the relay publishes them: keyed by their
        session (``_KAFKA_KEY``), so that one session's events keep their order."""
        rows = self._connection().execute(_ROWS, (list(row_ids),)).fetchall()
        return [
            OutboxEvent(
                row_id=int(r[0]),
                event_id=str(r[1]),
                topic=str(r[2]),
                key=str(r[3]),
                payload=str(r[4]).encode(),  # Postgres's text of the JSON: no parse here
            )
            for r in rows
        ]

    def last_id(self) -> int:
        """The newest outbox row's id (0 when empty)."""
        row = self._connection().execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        return int(row[0])

    def unsent_up_to(self, last_id: int) -> int:
        """How many rows with ids up to ``last_id`` are still unsent."""
        row = (
            self._connection()
            .execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND id <= %s", (last_id,))
            .fetchone()
        )
        return int(row[0])

    def mark_sent(self, row_ids: Sequence[int]) -> None:
        if row_ids:
            self._connection().execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY(%s) AND sent_at IS NULL",
                (list(row_ids),),
            )

    def mark_failed(self, errors: Sequence[tuple[int, str]]) -> None:
        for row_id, error in errors:
            self._connection().execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                (error[:2000], row_id),
            )
