"""``LedgerHealth``: whether the ledger's PostgreSQL answers, said once per outage.

The ledger is what keeps spending budgeted, so while it is away nothing that spends runs:
a ``%%wflo`` cell is refused before it starts (``check``: one line naming PostgreSQL, its
address and the remedy), and an LLM call from a cell already running is answered 503 by
the gateway (``is_ledger_outage`` tells it which errors mean that).

An outage is noticed by whoever meets it first: the check before a cell, the gateway, or
any statement of the ledger's SQLAlchemy engine that loses its connection (its
``handle_error`` event: the relay's poll, a step's close). A suspicion starts one watcher
thread that probes the server (a fresh connection, ``SELECT 1``) every
``probe_interval_s``: a failed probe confirms the outage and says so once through
``notice``; the first probe that succeeds says it is back, once, and the watcher ends. A
suspicion the first probe clears (a stale pooled connection after a restart) says nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError

from wflo_jupyter.core.errors import LedgerUnavailable

__all__ = ["LedgerHealth", "is_ledger_outage", "ledger_address", "refusal_line"]

log = logging.getLogger(__name__)

REMEDY = "start it with `wflo up`, or point WFLO_DATABASE_URL at the configured address"


def ledger_address(url: str | URL) -> str:
    """Where the ledger at ``url`` listens, without user or password: ``host:port``, or
    the path of its Unix socket (``?host=/dir``, as the local stack's is)."""
    parsed = make_url(url)
    host = parsed.host or _query(parsed, "host")
    port = parsed.port or _query(parsed, "port") or "5432"
    if host is None:
        return f"libpq's default socket, port {port}"
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"


def _query(url: URL, name: str) -> str | None:
    value = url.query.get(name)
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value


def refusal_line(address: str) -> str:
    """The one line a cell refused because the ledger at ``address`` is away shows."""
    return (
        f"PostgreSQL (the wflo ledger) at {address} is unreachable: cells are refused "
        f"until it is back, so nothing runs unbudgeted; {REMEDY}"
    )


def is_ledger_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the ledger's server could not be reached (not an SQL error
    of a statement, such as a refused reservation)."""
    if isinstance(exc, LedgerUnavailable | psycopg.OperationalError):
        return True
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError)
    )


class LedgerHealth:
    """The reachability of one ledger engine's server, and its notices (thread-safe)."""

    def __init__(
        self,
        engine: Engine,
        notice: Callable[[str], None],
        *,
        probe_interval_s: float = 1.0,
        probe_timeout_s: int = 3,
    ) -> None:
        self.engine = engine
        self.address = ledger_address(engine.url)
        self.notice = notice
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs.pop("context", None)
        self._connect_args: tuple[Any, ...] = tuple(args)
        self._connect_kwargs: dict[str, Any] = dict(kwargs)
        self._lock = threading.Lock()
        self._down_since: float | None = None  # wall clock: the outage was confirmed
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        event.listen(engine, "handle_error", self._on_error)

    @property
    def down_since(self) -> float | None:
        """When the current outage was confirmed (``time.time()``), None while it answers."""
        return self._down_since

    def check(self) -> None:
        """Before a cell: ``LedgerUnavailable`` (the refusal line) unless the ledger answers
        now. A pooled connection is pinged while it is up; a fresh one is tried while down."""
        if self._down_since is None:
            try:
                with self.engine.connect():
                    return
            except Exception as exc:
                if not is_ledger_outage(exc):
                    raise
        if self.probe():
            self._back()
            return
        self._confirm(announce=False)  # the refusal says it
        raise LedgerUnavailable(refusal_line(self.address))

    def recheck(self) -> None:
        """During an outage, probe now (the caller saw the ledger answer, e.g. a step's
        close got through): the "back" notice comes at once, not at the next probe."""
        if self._down_since is not None and self.probe():
            self._back()

    def suspect(self) -> None:
        """Something met a connection error: watch the server until it answers (any
        thread; returns at once)."""
        with self._lock:
            if self._stop.is_set() or (self._watcher is not None and self._watcher.is_alive()):
                return
            self._watcher = threading.Thread(
                target=self._watch, name="wflo-ledger-health", daemon=True
            )
            self._watcher.start()

    def probe(self) -> bool:
        """True if a fresh connection to the server answers ``SELECT 1``."""
        try:
            with psycopg.connect(
                *self._connect_args,
                **{**self._connect_kwargs, "connect_timeout": self.probe_timeout_s},
                autocommit=True,
            ) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error as exc:
            log.info("ledger at %s: probe failed: %s", self.address, str(exc).strip())
            return False

    def close(self) -> None:
        """Stop watching (idempotent)."""
        self._stop.set()
        if event.contains(self.engine, "handle_error", self._on_error):
            event.remove(self.engine, "handle_error", self._on_error)
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=self.probe_timeout_s + 1)

    # -- internals --------------------------------------------------------------------------
    def _on_error(self, context: ExceptionContext) -> None:
        if context.is_pre_ping:
            return  # the pool replaces that connection itself
        if context.is_disconnect or isinstance(
            context.original_exception, psycopg.OperationalError
        ):
            self.suspect()

    def _watch(self) -> None:
        try:
            while not self._stop.is_set():
                if self.probe():
                    self._back()
                    return
                self._confirm(announce=True)
                self._stop.wait(self.probe_interval_s)
        except Exception:  # never into a cell: the kernel log
            log.exception("watching the ledger at %s failed", self.address)

    def _confirm(self, *, announce: bool) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.time()
        log.warning("ledger at %s is unreachable", self.address)
        if announce:
            self.notice(
                f"PostgreSQL (the wflo ledger) at {self.address} is unreachable: LLM calls "
                "get HTTP 503 and the SDK retries them, new cells are refused, and this "
                f"step's record is written when it is back; {REMEDY}"
            )
        self.suspect()

    def _back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is None:
            return
        log.warning("ledger at %s is back", self.address)
        self.notice(
            f"PostgreSQL (the wflo ledger) at {self.address} is back after "
            f"{time.time() - since:.0f} s: cells run again"
        )
