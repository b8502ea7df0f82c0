"""``SessionEvents``: the session's events whose state is not in the ledger (its
sandboxes' lives, cache clears, team joins), written to the ledger's outbox through
``Ledger.record_events`` by a background thread.

Sandboxes start before the engines are connected (the pre-warm after ``%load_ext``), and
their watchers run under a sandbox's lock, so ``emit`` never touches the database: events
wait in memory until a ledger is attached (``attach``, when the session connects its
engines), then a writer thread writes them in order and wakes the relay. A failed write
is logged once and retried; ``close`` writes what is left, within a bounded time. Events
of a session that never connected its engines are dropped at close (logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.events import Event

if TYPE_CHECKING:
    from wflo_jupyter.ledger.store import Ledger

log = logging.getLogger(__name__)

_RETRY_S = 1.0


class SessionEvents:
    """The outbox writer of one session's own events (thread-safe; ``close`` is final)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.written = 0
        self._pending: list[Event] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ledger: Ledger | None = None
        self._on_written: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._failing = False

    def emit(self, event_type: str, payload: dict[str, Any], *, step: str | None = None) -> None:
        """Queue an event of this session (key and ``session``: the session id); never
        blocks on the database."""
        event = Event(
            event_type,
            key=self.session_id,
            payload={"session_id": self.session_id, **payload},
            session=self.session_id,
            step=step,
        )
        with self._lock:
            self._pending.append(event)
        self._wake.set()

    def sandbox_changed(self, what: str, details: dict[str, Any]) -> None:
        """A ``sandbox.lifecycle`` watcher: ``sandbox.<what>`` with ``details``."""
        self.emit(f"sandbox.{what}", details)

    def attach(self, ledger: Ledger, on_written: Callable[[], None] | None = None) -> None:
        """Start writing to ``ledger`` (what waited is written first); ``on_written`` is
        called after each write (the relay's ``wake``)."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._ledger, self._on_written = ledger, on_written
            self._thread = threading.Thread(
                target=self._run, name="wflo-session-events", daemon=True
            )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_RETRY_S)
            self._wake.clear()
            if not self.flush():
                self._stop.wait(_RETRY_S)

    def flush(self) -> bool:
        """Write the queued events now (in the caller's thread); False if that failed
        (they stay queued) or no ledger is attached yet."""
        ledger = self._ledger
        if ledger is None:
            return False
        with self._write_lock:
            with self._lock:
                batch = list(self._pending)
            if not batch:
                return True
            try:
                ledger.record_events(batch)
            except Exception as exc:
                if not self._failing:
                    log.warning("session events not written yet (%d): %s", len(batch), exc)
                    self._failing = True
                return False
            self._failing = False
            with self._lock:
                del self._pending[: len(batch)]
            self.written += len(batch)
        if self._on_written is not None:
            try:
                self._on_written()
            except Exception as exc:
                log.debug("waking the relay failed: %s", exc)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the writer after writing what is queued (tried for up to ``timeout_s``)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout_s)
        if not self.flush() or self._pending:
            with self._lock:
                left, self._pending = len(self._pending), []
            if left:
                log.warning("%d session events were not written to the outbox", left)
