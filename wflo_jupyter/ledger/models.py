"""SQLAlchemy 2 models of the ledger. Money columns are BIGINT micro-dollars.

Sessions, steps and the outbox (migration 0001); budgets, reservations (with the budgets
each one holds against), LLM calls and compute charges (migration 0002).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of every ledger table."""


class SessionRow(Base):
    """One kernel session (one ``%load_ext wflo_jupyter``)."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kernel_id: Mapped[str | None] = mapped_column(String(128))
    notebook_path: Mapped[str | None] = mapped_column(Text)
    user_name: Mapped[str | None] = mapped_column(String(128))
    hostname: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    steps: Mapped[list[StepRow]] = relationship(
        back_populates="session",
        order_by="StepRow.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class StepRow(Base):
    """One ``%%wflo`` execution."""

    __tablename__ = "steps"
    __table_args__ = (
        Index("ix_steps_session_seq", "session_id", "seq"),
        Index("ix_steps_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    code_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    exit_reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    budget_micros: Mapped[int | None] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    sandbox_ms: Mapped[int | None] = mapped_column(BigInteger)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    workflow_id: Mapped[str | None] = mapped_column(String(255))
    image: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    session: Mapped[SessionRow] = relationship(back_populates="steps")


class OutboxRow(Base):
    """An event waiting to be (or already) relayed to Kafka; written in the same
    transaction as the ledger change it describes."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "id", postgresql_where=text("sent_at IS NULL")),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)  # a random UUID
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    topic: Mapped[str] = mapped_column(String(255), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)


class BudgetRow(Base):
    """A spending limit for one scope: a cell (key: step id), a notebook (key: session id)
    or a named team. ``spent + reserved <= limit`` is what ``BudgetLedger.reserve`` keeps."""

    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("scope_kind", "scope_key", name="uq_budgets_scope"),
        CheckConstraint("scope_kind IN ('cell', 'notebook', 'team')", name="ck_budgets_scope_kind"),
        CheckConstraint("period IN ('none', 'day', 'month')", name="ck_budgets_period"),
        CheckConstraint("limit_micros >= 0", name="ck_budgets_limit"),
        CheckConstraint("spent_micros >= 0", name="ck_budgets_spent"),
        CheckConstraint("reserved_micros >= 0", name="ck_budgets_reserved"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    scope_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    scope_key: Mapped[str] = mapped_column(String(255), nullable=False)
    limit_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    period: Mapped[str] = mapped_column(String(8), nullable=False, server_default="none")
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    spent_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    reserved_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # bit i set: core.budget.THRESHOLDS[i] (50/75/90/100 %) was announced this period
    thresholds_emitted: Mapped[int] = mapped_column(
        SmallInteger, nullable=False, server_default="0"
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class ReservationRow(Base):
    """Money held for one call in flight (or a step's compute) until it is settled,
    released, or its lease expires."""

    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint(
            "state IN ('held', 'settled', 'released', 'expired')", name="ck_reservations_state"
        ),
        CheckConstraint("amount_micros >= 0", name="ck_reservations_amount"),
        Index(
            "ix_reservations_held_lease",
            "lease_expires_at",
            postgresql_where=text("state = 'held'"),
        ),
        Index("ix_reservations_step", "step_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    actual_micros: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    step_id: Mapped[str | None] = mapped_column(ForeignKey("steps.id", ondelete="SET NULL"))
    call_id: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the budgets it holds money against, in lock order (migrations 0003, 0005)
    budget_ids: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), nullable=False, server_default=text("'{}'::bigint[]")
    )


class LlmCallRow(Base):
    """One LLM call a step made (or one served from the cache at $0), with its normalised
    usage and what it cost."""

    __tablename__ = "llm_calls"
    __table_args__ = (
        Index("ix_llm_calls_step_created", "step_id", "created_at"),
        Index("ix_llm_calls_model_created", "model", "created_at"),
        Index("ix_llm_calls_request_hash", "request_hash"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    step_id: Mapped[str | None] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    reservation_id: Mapped[str | None] = mapped_column(
        ForeignKey("reservations.id", ondelete="SET NULL")
    )
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(255), nullable=False)
    endpoint: Mapped[str] = mapped_column(String(255), nullable=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    saved_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cached: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    simulated: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    step: Mapped[StepRow | None] = relationship()


class ComputeChargeRow(Base):
    """Sandbox CPU time a step used, at the configured price per CPU-second."""

    __tablename__ = "compute_charges"
    __table_args__ = (Index("ix_compute_charges_step", "step_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    step_id: Mapped[str | None] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    cpu_seconds: Mapped[Decimal] = mapped_column(Numeric(18, 6), nullable=False)
    price_per_cpu_second_micros: Mapped[Decimal] = mapped_column(Numeric(18, 6), nullable=False)
    cost_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
