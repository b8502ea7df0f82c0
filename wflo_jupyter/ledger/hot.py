"""``HotConnections``: plain psycopg connections for the ledger's one-statement money moves.

``wflo_reserve`` and ``wflo_finish`` each run as one statement in autocommit, once per LLM
call, from many threads and kernels at once. Through a SQLAlchemy pool each call paid a
checkout (with a pre-ping round trip on the kernel's engine), an isolation-level switch
and back, and the Core execution machinery: about three times the client CPU of the
statement itself, on machines where the client and Postgres share the cores. Here a
thread takes an idle autocommit connection (or opens one), runs the statement with
psycopg's server-side prepared statements and hands the connection back.

A connection that failed is closed, never reused. An idle connection that turns out to
be dead when it is next used (Postgres restarted meanwhile) is replaced and the
statement retried once on a fresh one: that statement never reached a live server.
Errors that remain are ``EngineUnavailable`` with one line; SQL errors (a refusal's
``WB001``) pass through as ``psycopg.Error``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine

from wflo_jupyter.core.errors import EngineUnavailable

__all__ = ["HotConnections"]

T = TypeVar("T")


class HotConnections:
    """A small free list of autocommit psycopg connections to ``engine``'s database."""

    def __init__(self, engine: Engine, *, max_idle: int = 8) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs.pop("context", None)
        self._args: tuple[Any, ...] = tuple(args)
        self._kwargs: dict[str, Any] = dict(kwargs)
        self.max_idle = max_idle
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``action(connection)`` on an idle connection (retried once on a fresh one if
        that connection was dead), or ``EngineUnavailable``."""
        reused = True
        while True:
            try:
                with self._connection(fresh=not reused) as conn:
                    return action(conn)
            except psycopg.OperationalError as exc:
                if reused and _connection_was_dead(exc):
                    reused = False
                    continue
                raise EngineUnavailable(f"PostgreSQL: {_first_line(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextmanager
    def _connection(self, *, fresh: bool) -> Iterator[psycopg.Connection[Any]]:
        conn = None if fresh else self._take()
        if conn is None:
            conn = psycopg.connect(
                *self._args, **self._kwargs, autocommit=True, row_factory=namedtuple_row
            )
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            raise
        except BaseException:
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                self._give_back(conn)
            raise
        self._give_back(conn)

    def _take(self) -> psycopg.Connection[Any] | None:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return None

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()


def _connection_was_dead(exc: psycopg.OperationalError) -> bool:
    """Did the statement fail because the connection was already gone (so it never ran)?"""
    return exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
