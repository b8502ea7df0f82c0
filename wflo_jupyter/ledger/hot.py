"""``HotConnections``: plain psycopg connections for the ledger's one-statement money moves.

``wflo_reserve`` and ``wflo_finish`` each run as one statement in autocommit, once per LLM
call, from many threads and kernels at once. Through a SQLAlchemy pool each call paid a
checkout (with a pre-ping round trip on the kernel's engine), an isolation-level switch
and back, and the Core execution machinery: about three times the client CPU of the
statement itself, on machines where the client and Postgres share the cores. Here a
thread takes an idle autocommit connection (or opens one), runs the statement with
psycopg's server-side prepared statements and hands the connection back.

The hottest statements (``run_prepared``: a reservation) go one level lower still: a
``HotStatement`` is prepared once per connection and executed with libpq's
``PQexecPrepared`` through psycopg's ``pgconn``, text parameters in and binary columns
out (decoded by the statement's declared column types), with no cursor, no query
conversion and no per-value adapters. Under contention on
one budget the client's CPU is the reservation's throughput on a machine that shares its
cores with Postgres (bench/ledger.py).

A connection that failed is closed, never reused. An idle connection that turns out to
be dead when it is next used (Postgres restarted meanwhile) is replaced and the
statement retried once on a fresh one: that statement never reached a live server.
Errors that remain are ``LedgerUnavailable`` (an ``EngineUnavailable``) with one line;
SQL errors (a refusal's ``WB001``) pass through as ``psycopg.Error``.
"""

from __future__ import annotations

import json
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.pq import ConnStatus, DiagnosticField, ExecStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine

from wflo_jupyter.core.errors import LedgerUnavailable, WfloError

__all__ = ["HotConnections", "HotStatement", "StatementFailed", "text_array"]

T = TypeVar("T")
Row = tuple[Any, ...]

_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
_INT8 = struct.Struct("!q")
_DECODERS: dict[str, Callable[[bytes, str], Any]] = {
    # PostgreSQL's binary forms: network-order integers, text as is, timestamptz as
    # microseconds since 2000-01-01 UTC, json as its text
    "int": lambda value, _: int.from_bytes(value, "big", signed=True),
    "text": lambda value, encoding: value.decode(encoding),
    "bool": lambda value, _: value == b"\x01",
    "timestamptz": lambda value, _: _EPOCH_2000 + timedelta(microseconds=_INT8.unpack(value)[0]),
    "json": lambda value, _: json.loads(value),
}


@dataclass(frozen=True)
class HotStatement:
    """One statement ``run_prepared`` prepares once per connection: ``sql`` takes its
    parameters as ``$1 .. $n`` in text form (cast them in the SQL); ``columns`` are the
    types of its result columns (``int`` for any integer, ``text``, ``bool``,
    ``timestamptz``, ``json``), used to decode each row."""

    name: str
    sql: str
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if c not in _DECODERS]
        if unknown:
            raise ValueError(f"{self.name}: no binary decoder for column types {unknown}")


class StatementFailed(WfloError):
    """A hot statement's own SQL error (the connection is fine): its SQLSTATE, primary
    message and detail."""

    def __init__(self, sqlstate: str, message: str, detail: str | None) -> None:
        super().__init__(f"PostgreSQL: {message} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


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
        self._prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
            weakref.WeakKeyDictionary()
        )

    def run(self, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``action(connection)`` on an idle connection (retried once on a fresh one if
        that connection was dead), or ``LedgerUnavailable``."""
        reused = True
        while True:
            try:
                with self._connection(fresh=not reused) as conn:
                    return action(conn)
            except psycopg.OperationalError as exc:
                if reused and _connection_was_dead(exc):
                    reused = False
                    continue
                raise LedgerUnavailable(f"PostgreSQL: {_first_line(exc)}") from None

    def run_prepared(self, statement: HotStatement, params: Sequence[str | None]) -> list[Row]:
        """``statement`` with ``params`` (text; None is NULL): its rows, each value decoded
        by its declared column type (None for NULL). ``StatementFailed`` for an SQL error,
        ``LedgerUnavailable`` when the database cannot be reached."""
        return self.run(lambda conn: self._execute(conn, statement, params))

    def _execute(
        self, conn: psycopg.Connection[Any], statement: HotStatement, params: Sequence[str | None]
    ) -> list[Row]:
        pgconn = conn.pgconn
        encoding = conn.info.encoding
        name = statement.name.encode()
        prepared = self._prepared.setdefault(conn, set())
        if statement.name not in prepared:
            _check(pgconn.prepare(name, statement.sql.encode(encoding)), pgconn, encoding)
            prepared.add(statement.name)
        values = [None if p is None else p.encode(encoding) for p in params]
        # None is a NULL parameter (libpq semantics, which psycopg's stub does not spell)
        result = pgconn.exec_prepared(name, values, result_format=1)  # type: ignore[arg-type]
        _check(result, pgconn, encoding)
        if result.nfields != len(statement.columns):
            raise StatementFailed(
                "42P18", f"{statement.name} returned {result.nfields} columns", None
            )
        decoders = [_DECODERS[c] for c in statement.columns]
        rows: list[Row] = []
        for r in range(result.ntuples):
            row = []
            for f, decode in enumerate(decoders):
                value = result.get_value(r, f)
                row.append(None if value is None else decode(bytes(value), encoding))
            rows.append(tuple(row))
        return rows

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


def _check(result: Any, pgconn: Any, encoding: str) -> None:
    """Raise for a failed ``PGresult``: ``psycopg.OperationalError`` when the connection
    is broken (``run`` then replaces it), ``StatementFailed`` for the statement's error."""
    if result.status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
        return

    def field(which: DiagnosticField) -> str | None:
        value = result.error_field(which)
        return None if value is None else bytes(value).decode(encoding, "replace")

    sqlstate = field(DiagnosticField.SQLSTATE)
    message = field(DiagnosticField.MESSAGE_PRIMARY) or bytes(
        result.error_message or pgconn.error_message
    ).decode(encoding, "replace")
    if pgconn.status == ConnStatus.BAD or sqlstate is None or sqlstate.startswith(("08", "57P")):
        raise psycopg.OperationalError(message.strip() or "the connection to PostgreSQL broke")
    raise StatementFailed(sqlstate, message, field(DiagnosticField.MESSAGE_DETAIL))


def text_array(values: Sequence[str]) -> str:
    """A PostgreSQL text-array literal of ``values`` (every element quoted)."""
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


def _connection_was_dead(exc: psycopg.OperationalError) -> bool:
    """Did the statement fail because the connection was already gone (so it never ran)?"""
    return exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
