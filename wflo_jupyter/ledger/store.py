"""``Ledger``: the one class that writes and reads the ledger database.

Every ledger change that has an event writes its outbox row in the same transaction; a
step that starts or finishes also notifies ``wflo_step`` (``ledger.feed``), sent at commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from wflo_jupyter.core.errors import EngineUnavailable, LedgerUnavailable
from wflo_jupyter.core.events import (
    STEP_CANCELLED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_STARTED,
    Event,
)
from wflo_jupyter.core.steps import FINISHED_STATUSES, StepResult
from wflo_jupyter.ledger.feed import STEP_CHANNEL
from wflo_jupyter.ledger.models import OutboxRow, SessionRow, StepRow

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_KEY = 0x77666C6F  # "wflo": advisory lock serialising concurrent migrations


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` when it does not exist; True if created."""
    target = make_url(url)
    name = target.database
    if not name:
        raise EngineUnavailable(f"database URL names no database: {url}")
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    except OperationalError as exc:
        raise LedgerUnavailable(
            f"PostgreSQL at {target.render_as_string()}: {_first_line(exc)}"
        ) from None
    finally:
        admin.dispose()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database named in ``url`` (tests clean up the databases they create)."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(target.database or "")
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        admin.dispose()


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class OutboxEvent:
    """An unsent outbox row, as the relay sees it."""

    row_id: int
    event_id: str
    topic: str
    key: str
    payload: bytes


class Ledger:
    """Ledger operations on one SQLAlchemy ``Engine`` (thread-safe; one per session)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(cls, url: str, *, create: bool = True, migrate: bool = True) -> Ledger:
        """Open the ledger at ``url``, creating the database and migrating as needed."""
        if create:
            ensure_database(url)
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        ledger = cls(engine)
        if migrate:
            ledger.migrate()
        return ledger

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------
    def _alembic_config(self) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        return config

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision``; concurrent callers are serialised."""
        from alembic import command

        self._run_alembic(lambda config: command.upgrade(config, revision))

    def downgrade(self, revision: str) -> None:
        from alembic import command

        self._run_alembic(lambda config: command.downgrade(config, revision))

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            has_table = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
            if not has_table:
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return str(value) if value is not None else None

    def _run_alembic(self, action: Any) -> None:
        config = self._alembic_config()
        try:
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                config.attributes["connection"] = conn
                action(config)
        except OperationalError as exc:
            raise LedgerUnavailable(f"PostgreSQL: {_first_line(exc)}") from None

    # -- sessions and steps -----------------------------------------------------------------
    def open_session(
        self,
        session_id: str,
        *,
        kernel_id: str | None = None,
        notebook_path: str | None = None,
        user_name: str | None = None,
        hostname: str | None = None,
        pid: int | None = None,
    ) -> None:
        with self._sessions.begin() as db:
            if db.get(SessionRow, session_id) is not None:
                return  # a retried start of the same session
            db.add(
                SessionRow(
                    id=session_id,
                    kernel_id=kernel_id,
                    notebook_path=notebook_path,
                    user_name=user_name,
                    hostname=hostname,
                    pid=pid,
                )
            )

    def close_session(self, session_id: str) -> None:
        with self._sessions.begin() as db:
            db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(ended_at=datetime.now(UTC))
            )

    def start_step(
        self,
        *,
        step_id: str,
        session_id: str,
        name: str,
        code: str,
        budget_micros: int | None,
        workflow_id: str,
        image: str,
    ) -> int:
        """Record a running step (idempotent on ``step_id``); returns its sequence number."""
        with self._sessions.begin() as db:
            existing = db.get(StepRow, step_id)
            if existing is not None:
                return existing.seq
            db.execute(select(SessionRow.id).where(SessionRow.id == session_id).with_for_update())
            seq = (
                db.scalar(
                    select(func.coalesce(func.max(StepRow.seq), 0)).where(
                        StepRow.session_id == session_id
                    )
                )
                or 0
            ) + 1
            db.add(
                StepRow(
                    id=step_id,
                    session_id=session_id,
                    seq=seq,
                    name=name,
                    code_sha256=hashlib.sha256(code.encode()).hexdigest(),
                    status="running",
                    budget_micros=budget_micros,
                    workflow_id=workflow_id,
                    image=image,
                )
            )
            self._emit(
                db,
                Event(
                    STEP_STARTED,
                    key=step_id,
                    session=session_id,
                    step=step_id,
                    payload={
                        "step_id": step_id,
                        "session_id": session_id,
                        "name": name,
                        "seq": seq,
                        "workflow_id": workflow_id,
                    },
                ),
            )
            self._notify_step(db, step_id, session_id, "running")
            return seq

    def finish_step(self, result: StepResult) -> None:
        """Record the outcome (idempotent: a finished step is not changed again)."""
        with self._sessions.begin() as db:
            row = db.get(StepRow, result.step_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown step {result.step_id}")
            if row.status in FINISHED_STATUSES:
                return
            row.status = result.status
            row.exit_code = result.exit_code
            row.exit_reason = result.exit_reason
            row.error = f"{result.error_name}: {result.error_value}" if result.error_name else None
            finished = datetime.now(UTC)
            row.duration_ms = round((finished - row.started_at).total_seconds() * 1000)
            row.sandbox_ms = round(result.sandbox_seconds * 1000)
            row.finished_at = finished
            event_type = (
                STEP_COMPLETED if result.ok else STEP_CANCELLED if result.cancelled else STEP_FAILED
            )
            self._emit(
                db,
                Event(
                    event_type,
                    key=row.id,
                    session=row.session_id,
                    step=row.id,
                    payload={
                        "step_id": row.id,
                        "session_id": row.session_id,
                        "name": row.name,
                        "seq": row.seq,
                        "status": row.status,
                        "exit_code": row.exit_code,
                        "exit_reason": row.exit_reason,
                        "error": row.error,
                        "duration_ms": row.duration_ms,
                        "sandbox_ms": row.sandbox_ms,
                        "cost_micros": row.cost_micros,
                        "workflow_id": row.workflow_id,
                    },
                ),
            )
            self._notify_step(db, row.id, row.session_id, row.status)

    def step(self, step_id: str) -> StepRow | None:
        with self._sessions() as db:
            return db.get(StepRow, step_id)

    def steps(self, session_id: str | None = None, limit: int = 1000) -> Sequence[StepRow]:
        """Steps, newest session first, in execution order within a session."""
        with self._sessions() as db:
            query = select(StepRow).order_by(StepRow.started_at, StepRow.seq).limit(limit)
            if session_id is not None:
                query = query.where(StepRow.session_id == session_id)
            return db.scalars(query).all()

    def sessions_of_notebook(self, notebook_path: str, since: datetime) -> list[str]:
        """Ids of sessions that ran ``notebook_path`` and started at or after ``since``."""
        with self._sessions() as db:
            return list(
                db.scalars(
                    select(SessionRow.id)
                    .where(SessionRow.notebook_path == notebook_path)
                    .where(SessionRow.started_at >= since)
                    .order_by(SessionRow.started_at)
                ).all()
            )

    @staticmethod
    def _notify_step(db: Session, step_id: str, session_id: str, status: str) -> None:
        """``pg_notify('wflo_step', {step_id, session_id, notebook_path, status})``."""
        db.execute(
            text(
                "SELECT pg_notify(:channel, json_build_object("
                "'step_id', CAST(:step AS text), 'session_id', s.id, "
                "'notebook_path', s.notebook_path, 'status', CAST(:status AS text))::text) "
                "FROM sessions AS s WHERE s.id = :session"
            ),
            {"channel": STEP_CHANNEL, "step": step_id, "session": session_id, "status": status},
        )

    # -- outbox -----------------------------------------------------------------------------
    @staticmethod
    def _emit(db: Session, event: Event) -> None:
        db.add(
            OutboxRow(
                event_id=event.id,
                event_type=event.type,
                topic=event.topic,
                key=event.key,
                envelope=json.loads(event.to_json()),
            )
        )

    def record_events(self, events: Sequence[Event]) -> None:
        """Write ``events`` to the outbox in one transaction: for changes whose state is
        not in the ledger (a sandbox, the cache, the session's teams)."""
        if not events:
            return
        with self._sessions.begin() as db:
            for event in events:
                self._emit(db, event)

    def recent_events(self, limit: int = 20, session_id: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` event envelopes (oldest first), optionally of one session,
        each with ``sent`` telling whether the relay has delivered it to Kafka."""
        with self._sessions() as db:
            query = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
            if session_id is not None:
                query = query.where(  # ``session`` since envelope v2, else the payload's
                    or_(
                        OutboxRow.envelope["session"].astext == session_id,
                        OutboxRow.envelope["payload"]["session_id"].astext == session_id,
                    )
                )
            rows = db.scalars(query).all()
            return [{**r.envelope, "sent": r.sent_at is not None} for r in reversed(rows)]

    def unsent_events(self, limit: int = 500) -> list[OutboxEvent]:
        with self._sessions() as db:
            rows = db.scalars(
                select(OutboxRow)
                .where(OutboxRow.sent_at.is_(None))
                .order_by(OutboxRow.id)
                .limit(limit)
            ).all()
            return [
                OutboxEvent(
                    row_id=r.id,
                    event_id=r.event_id,
                    topic=r.topic,
                    key=r.key,
                    payload=json.dumps(r.envelope, sort_keys=True, separators=(",", ":")).encode(),
                )
                for r in rows
            ]
