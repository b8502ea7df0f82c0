"""``LedgerAccess``: the server extension's one way into the ledger, read-only.

It finds the ledger through the kernel's settings (``WFLO_DATABASE_URL``, else the local
stack's PostgreSQL when it runs; it never starts engines nor creates or migrates the
database), keeps one small SQLAlchemy engine for every request, and turns every way of
not reaching the database into ``LedgerUnreachable``, said once in the log when the
ledger goes away and once when it comes back, never a traceback per request. Nothing is
cached about a failure: the next request simply tries again, so the server recovers by
itself when PostgreSQL returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, ProgrammingError

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.stack.settings import Settings, ledger_url, temporal_ui_url

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_S = 3


class LedgerUnreachable(Exception):
    """The ledger cannot be read now (no database configured or running, or it fails)."""


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class LedgerAccess:
    """Reads the ledger for the handlers and the change hub (thread-safe)."""

    def __init__(self, settings_of: Callable[[], Settings] = Settings.from_env) -> None:
        self._settings_of = settings_of
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._url: str | None = None
        self._down = False
        self._closed = False

    def engine(self) -> Engine:
        """The engine on the ledger's database (made on first use; re-resolved while no
        database is known, e.g. before ``wflo up``), or ``LedgerUnreachable``."""
        with self._lock:
            if self._closed:
                raise LedgerUnreachable("the server extension is stopping")
            if self._engine is not None:
                return self._engine
            try:
                url = ledger_url(self._settings_of())
            except WfloError as exc:  # a malformed WFLO_* variable
                raise LedgerUnreachable(str(exc)) from None
            if url is None:
                raise LedgerUnreachable("no WFLO_DATABASE_URL and no local stack running")
            self._url = url
            self._engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=2,
                max_overflow=4,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
            return self._engine

    def temporal_ui(self) -> tuple[str | None, str]:
        """The Temporal web UI's address (when the settings know one) and namespace."""
        try:
            settings = self._settings_of()
            return temporal_ui_url(settings), settings.temporal_namespace
        except WfloError:
            return None, "default"

    def read(self, query: Callable[[Engine], T], empty: T) -> T:
        """``query(engine)``; ``empty`` when the ledger has no tables yet (no kernel has
        used it); ``LedgerUnreachable`` when it cannot be reached."""
        try:
            result = query(self.engine())
        except ProgrammingError as exc:
            if isinstance(exc.orig, psycopg.errors.UndefinedTable):
                result = empty
            else:
                raise
        except (DBAPIError, psycopg.Error, LedgerUnreachable) as exc:
            self.failed(exc)
            raise LedgerUnreachable(_first_line(exc)) from None
        self.succeeded()
        return result

    def failed(self, exc: BaseException) -> None:
        """Note an outage (logged once, until ``succeeded``)."""
        with self._lock:
            first, self._down = not self._down, True
        if first:
            log.warning("wflo: ledger unreachable: %s", _first_line(exc))

    def succeeded(self) -> None:
        with self._lock:
            back, self._down = self._down, False
        if back:
            log.info("wflo: ledger reachable again")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()
