"""``BudgetLedger``: budgets, reservations and spend in PostgreSQL, never overspent.

Owns the SQL that moves money: setting budgets, reserving a call's worst case against
every enclosing budget at once, settling at the real cost (with the ``llm_calls`` row,
``steps.cost_micros``, outbox events and threshold events), releasing, expiring leases,
day/month period resets, sandbox compute charges, and the live feed
(``pg_notify('wflo_budget', ...)`` on every money move; ``watch`` listens).

**The atomic reserve is one SQL statement**, ``SELECT * FROM wflo_reserve(...)`` (a
PL/pgSQL function, migrations 0003-0005), run as its own transaction::

    INSERT INTO reservations ... budget_ids; INSERT INTO outbox ...   -- no budget lock yet
    for each enclosing budget, in lock order (cell, notebook, team; then id):
        UPDATE budgets SET reserved_micros = reserved_micros + :amount   -- (a day/month
        WHERE id = :id AND spent + reserved + :amount <= limit_micros   --  budget rolls over)
        if no row was updated: RAISE 'WB001' -> the whole transaction rolls back
    pg_notify('wflo_budget', <new totals>)
    COMMIT

Why it cannot overspend: each ``UPDATE`` locks its budget row and tests the limit on
the newest committed version of that row (under READ COMMITTED an UPDATE that waited for
a lock re-evaluates its WHERE on the row as the other transaction left it), so
concurrent reservations on a budget queue behind each other and each sees all earlier
ones; a budget without room raises, which undoes the reservation row and every budget
already updated, so a refusal moves no money anywhere. One statement means one round
trip, and the work that needs no budget lock is done before the first one; the shared
(team) budget comes last in the lock order, so the row concurrent calls queue on stays
locked only for its own update, the notify and the commit.

Why it cannot deadlock: every operation here takes its locks in one global order: at
most one reservation row, then the step row, then budget rows in lock order: cell, then
notebook, then team (and any other kind), ties by ascending id. (Expiry
ends one reservation per statement.) ``NO KEY UPDATE`` (what these updates take) does
not conflict with the ``KEY SHARE`` locks that foreign-key checks of concurrent inserts
take. Each row is locked by one statement and updated by a later one (or locked by the
UPDATE itself): a single SQL statement that locks a row in one CTE and updates it in
another re-locks the newest row version and can deadlock on the tuple lock under
contention (seen while building this, so none of the statements here do that).

Settle, release and expiry go through ``wflo_finish``: lock the reservation row, mark it,
add the step's cost and write the ``llm_calls`` row and its event, then lock its budgets
(in lock order), spend and free the rest, announce thresholds, write the budget events
and ``pg_notify``.

Leases: a reservation is held until ``lease_expires_at`` (database clock). A ``reserve``
notices expired leases (at most once a second per ledger, and always when it is refused)
and frees them (``expire_leases``), so a crashed kernel's reservations free themselves.
A call that finishes after its lease expired is still settled: the money was spent, and
the ledger records it (``Settlement.late``).

Period resets (``day`` / ``month``, UTC) happen lazily on the first money move of a new
period: spent and the emitted thresholds go back to zero; reserved money stays held.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import namedtuple
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Row, create_engine, text

from wflo_jupyter.core.budget import (
    BudgetExceeded,
    BudgetNotFound,
    BudgetScope,
    BudgetState,
    Period,
    check_amount,
    check_limit,
    check_period,
    crossed_thresholds,
    needs_reset,
    period_start,
    rearm_thresholds,
    thresholds_from_mask,
    thresholds_mask,
)
from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.events import BUDGET_THRESHOLD, BUDGET_UPDATED, LLM_CALL, Event, topic_for
from wflo_jupyter.core.pricing import Usage
from wflo_jupyter.ledger.hot import HotConnections, HotStatement, StatementFailed, text_array

__all__ = [
    "DEFAULT_LEASE_S",
    "NOTIFY_CHANNEL",
    "BudgetExceeded",
    "BudgetLedger",
    "BudgetNotFound",
    "LlmCall",
    "Reservation",
    "ReservationNotFound",
    "Settlement",
    "ThresholdCrossed",
    "compute_cost_micros",
]

NOTIFY_CHANNEL = "wflo_budget"
DEFAULT_LEASE_S = 300.0

ScopeLike = BudgetScope | tuple[str, str]


def as_scope(scope: ScopeLike) -> BudgetScope:
    if isinstance(scope, BudgetScope):
        return scope
    kind, key = scope
    return BudgetScope(kind, key)  # type: ignore[arg-type]


class ReservationNotFound(WfloError):
    """``settle`` / ``release`` named a reservation the ledger does not have."""

    def __init__(self, reservation_id: str) -> None:
        self.reservation_id = reservation_id
        super().__init__(f"no reservation {reservation_id} in the ledger")


@dataclass(frozen=True)
class Reservation:
    """Money held against every budget in ``scopes`` until settled or released."""

    id: str
    amount_micros: int
    scopes: tuple[BudgetScope, ...]
    lease_expires_at: datetime
    step_id: str | None = None
    call_id: str | None = None
    label: str = ""
    budgets: tuple[BudgetState, ...] = ()  # the budgets right after the reservation


@dataclass(frozen=True)
class LlmCall:
    """What ``settle`` records about the call (one ``llm_calls`` row)."""

    provider: str
    model: str
    endpoint: str
    usage: Usage = field(default_factory=Usage)
    saved_micros: int = 0
    cached: bool = False
    simulated: bool = False
    latency_ms: int | None = None
    request_hash: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class ThresholdCrossed:
    scope: BudgetScope
    threshold: int
    state: BudgetState


@dataclass(frozen=True)
class Settlement:
    """The outcome of ``settle`` / ``release`` / ``charge_compute``."""

    reservation_id: str | None
    actual_micros: int
    released_micros: int  # held minus actual (0 when the lease had already expired)
    budgets: tuple[BudgetState, ...]
    thresholds: tuple[ThresholdCrossed, ...] = ()
    already_settled: bool = False  # a repeated call: nothing changed
    late: bool = False  # the lease had expired before the settle


_BUDGET_COLUMNS = (
    "id, scope_kind, scope_key, limit_micros, spent_micros, reserved_micros, period, "
    "period_start, thresholds_emitted"
)

_FINISH = text(
    "SELECT * FROM wflo_finish(CAST(:rid AS text), CAST(:actual AS bigint), "
    "CAST(:op AS text), CAST(:from_states AS text[]), CAST(:to_state AS text), "
    "CAST(:check_lease AS boolean), CAST(:lease_before AS timestamptz), "
    "CAST(:budget_topic AS text), CAST(:llm_topic AS text), CAST(:call AS jsonb))"
)


_INSERT_CACHED_CALLS = text(
    """
    WITH c AS (
        INSERT INTO llm_calls
        SELECT r.* FROM jsonb_array_elements(CAST(:calls AS jsonb)) AS e(v),
             LATERAL jsonb_populate_record(NULL::llm_calls,
                                           e.v || jsonb_build_object('created_at', now())) AS r
        RETURNING *
    )
    INSERT INTO outbox (event_id, event_type, topic, key, envelope)
    SELECT x.event_id, 'llm.call', :topic, x.key,
           jsonb_build_object('id', x.event_id, 'type', 'llm.call', 'key', x.key,
                              'occurred_at', now(), 'payload', x.payload)
    FROM (SELECT gen_random_uuid()::text AS event_id, coalesce(c.step_id, c.id) AS key,
                 (to_jsonb(c) - 'created_at') || jsonb_build_object('call_id', c.id) AS payload
          FROM c) AS x
    """
)

# the hot path's statements (ledger/hot.py)
_RESERVE = HotStatement(
    "wflo_hot_reserve",
    "SELECT payload, lease_expires_at, has_expired FROM wflo_reserve($1::text[], $2::text[], "
    "$3::bigint, $4::text, $5::double precision, $6::text, $7::text, $8::text, $9::text, "
    "$10::boolean)",
    ("json", "timestamptz", "bool"),
)
_FINISH_COLUMNS = {
    "id": "int",
    "scope_kind": "text",
    "scope_key": "text",
    "limit_micros": "int",
    "spent_micros": "int",
    "reserved_micros": "int",
    "period": "text",
    "period_start": "timestamptz",
    "thresholds_emitted": "int",
    "spent_before": "int",
    "mask_before": "int",
    "from_state": "text",
    "held": "int",
    "seen_state": "text",
    "seen_actual": "int",
}
_FinishRow = namedtuple("_FinishRow", list(_FINISH_COLUMNS))  # type: ignore[misc]
_FINISH_HOT = HotStatement(
    "wflo_hot_finish",
    f"SELECT {', '.join(_FINISH_COLUMNS)} FROM wflo_finish($1::text, $2::bigint, $3::text, "
    "$4::text[], $5::text, $6::boolean, $7::timestamptz, $8::text, $9::text, $10::jsonb)",
    tuple(_FINISH_COLUMNS.values()),
)

_REFUSED = "WB001"  # SQLSTATE raised by wflo_reserve when a budget has no room


def _refusal(
    scopes: Sequence[BudgetScope], amount: int, call_label: str, detail: Mapping[str, Any]
) -> BudgetExceeded:
    """``BudgetExceeded`` for the first budget (in the caller's order) without room, from
    the numbers ``wflo_reserve`` read when it refused."""
    budgets = detail.get("budgets") or []
    for scope, budget in zip(scopes, budgets, strict=False):
        if budget.get("id") is None:
            raise BudgetNotFound(scope)
    candidates = [
        (scope, b)
        for scope, b in zip(scopes, budgets, strict=False)
        if int(b["spent_micros"]) + int(b["reserved_micros"]) + amount > int(b["limit_micros"])
    ] or [(s, b) for s, b in zip(scopes, budgets, strict=False) if b["id"] == detail["refused"]]
    scope, budget = candidates[0]
    return BudgetExceeded(
        scope=scope,
        limit_micros=int(budget["limit_micros"]),
        spent_micros=int(budget["spent_micros"]),
        reserved_micros=int(budget["reserved_micros"]),
        needed_micros=amount,
        call_label=call_label,
    )


def _scope_payload(state: BudgetState) -> dict[str, Any]:
    """Python twin of ``wflo_budget_event``'s payload (for ``set_budget``)."""
    return {
        "kind": state.scope.kind,
        "key": state.scope.key,
        "name": state.scope.name,
        "limit_micros": state.limit_micros,
        "spent_micros": state.spent_micros,
        "reserved_micros": state.reserved_micros,
        "period": state.period,
        "period_start": state.period_start.isoformat() if state.period_start else None,
        "thresholds_emitted": list(state.thresholds_emitted),
    }


def _state_from_payload(payload: Mapping[str, Any]) -> BudgetState:
    start = payload.get("period_start")
    return BudgetState(
        scope=BudgetScope(payload["kind"], payload["key"]),
        limit_micros=int(payload["limit_micros"]),
        spent_micros=int(payload["spent_micros"]),
        reserved_micros=int(payload["reserved_micros"]),
        period=check_period(payload.get("period", "none")),
        period_start=datetime.fromisoformat(start) if start else None,
        thresholds_emitted=tuple(int(t) for t in payload.get("thresholds_emitted", ())),
    )


def _state_from_row(row: Row[Any], spent: int, mask: int, pstart: datetime | None) -> BudgetState:
    return BudgetState(
        scope=BudgetScope(row.scope_kind, row.scope_key),
        limit_micros=int(row.limit_micros),
        spent_micros=spent,
        reserved_micros=int(row.reserved_micros),
        period=check_period(row.period),
        period_start=pstart,
        thresholds_emitted=thresholds_from_mask(mask),
    )


@dataclass
class _Budget:
    """A budget row read (and locked) by one of the less frequent Python-side operations."""

    id: int
    scope: BudgetScope
    limit: int
    spent: int
    reserved: int
    period: Period
    period_start: datetime | None
    mask: int

    @classmethod
    def from_row(cls, row: Row[Any], now: datetime) -> _Budget:
        budget = cls(
            id=int(row.id),
            scope=BudgetScope(row.scope_kind, row.scope_key),
            limit=int(row.limit_micros),
            spent=int(row.spent_micros),
            reserved=int(row.reserved_micros),
            period=check_period(row.period),
            period_start=row.period_start,
            mask=int(row.thresholds_emitted),
        )
        if needs_reset(budget.period, budget.period_start, now):
            budget.spent, budget.mask = 0, 0
            budget.period_start = period_start(budget.period, now)
        return budget

    def state(self) -> BudgetState:
        return BudgetState(
            scope=self.scope,
            limit_micros=self.limit,
            spent_micros=self.spent,
            reserved_micros=self.reserved,
            period=self.period,
            period_start=self.period_start,
            thresholds_emitted=thresholds_from_mask(self.mask),
        )


def compute_cost_micros(
    cpu_seconds: float | Decimal | int, price_per_cpu_second_micros: int | Decimal
) -> int:
    """CPU-seconds x micro-dollars per CPU-second, rounded up to a whole micro-dollar."""
    seconds = _decimal(cpu_seconds)
    price = Decimal(price_per_cpu_second_micros)
    if not seconds.is_finite() or seconds < 0:
        raise ValueError(f"cpu_seconds must be a non-negative number, got {cpu_seconds!r}")
    if not price.is_finite() or price < 0:
        raise ValueError(f"compute price must be non-negative, got {price_per_cpu_second_micros!r}")
    return math.ceil(seconds * price)


def _decimal(value: float | Decimal | int) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


class BudgetLedger:
    """Budget operations on one SQLAlchemy ``Engine`` (thread-safe; share it)."""

    def __init__(self, engine: Engine, *, default_lease_s: float = DEFAULT_LEASE_S) -> None:
        self.engine = engine
        self.default_lease_s = default_lease_s
        self._hot = HotConnections(engine)  # reserve / settle / release: one statement each
        self.lease_probe_s = 1.0  # how often a reserve asks whether leases have expired
        self._next_lease_probe = 0.0
        self._budget_topic = topic_for(BUDGET_UPDATED)
        self._llm_topic = topic_for(LLM_CALL)

    @classmethod
    def connect(cls, url: str, *, migrate: bool = True, **engine_kwargs: Any) -> BudgetLedger:
        """A ledger on its own engine (other processes, benchmarks, the CLI)."""
        if migrate:
            from wflo_jupyter.ledger.store import Ledger

            Ledger.connect(url).close()
        return cls(create_engine(url, **engine_kwargs))

    def close(self) -> None:
        self._hot.close()
        self.engine.dispose()

    def _autocommit(self) -> Connection:
        """A connection whose every statement is its own transaction (one round trip)."""
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    # -- budgets --------------------------------------------------------------------------------
    def set_budget(
        self, kind: str, key: str, limit_micros: int, period: str = "none"
    ) -> BudgetState:
        """Create or change the budget of a scope; money spent and reserved is kept. A
        lowered limit announces thresholds it now passes; a raised one re-arms them."""
        scope = BudgetScope(kind, key)  # type: ignore[arg-type]
        limit = check_limit(limit_micros)
        checked_period = check_period(period)
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO budgets (scope_kind, scope_key, limit_micros, period) "
                    "VALUES (:kind, :key, :limit, :period) "
                    "ON CONFLICT (scope_kind, scope_key) DO NOTHING"
                ),
                {"kind": scope.kind, "key": scope.key, "limit": limit, "period": checked_period},
            )
            row = conn.execute(
                text(
                    f"SELECT {_BUDGET_COLUMNS}, now() AS now FROM budgets "
                    "WHERE scope_kind = :kind AND scope_key = :key FOR NO KEY UPDATE"
                ),
                {"kind": scope.kind, "key": scope.key},
            ).one()
            budget = _Budget.from_row(row, row.now)
            if budget.period != checked_period:
                # a new period starts now; what was spent stays counted in it
                budget.period = checked_period
                budget.period_start = period_start(checked_period, row.now)
            budget.limit = limit
            budget.mask = rearm_thresholds(limit, budget.spent, budget.mask)
            events: list[Event] = []
            new = crossed_thresholds(limit, budget.spent, budget.spent, budget.mask)
            budget.mask |= thresholds_mask(new)
            for threshold in new:
                events.append(
                    Event(
                        BUDGET_THRESHOLD,
                        key=str(scope),
                        payload={**_scope_payload(budget.state()), "threshold": threshold},
                    )
                )
            update = {**_scope_payload(budget.state()), "op": "set"}
            events.append(Event(BUDGET_UPDATED, key=str(scope), payload=update))
            conn.execute(
                text(
                    "UPDATE budgets SET limit_micros = :limit, period = :period, "
                    "period_start = :pstart, spent_micros = :spent, "
                    "thresholds_emitted = :mask, updated_at = now() WHERE id = :id"
                ),
                {
                    "limit": limit,
                    "period": budget.period,
                    "pstart": budget.period_start,
                    "spent": budget.spent,
                    "mask": budget.mask,
                    "id": budget.id,
                },
            )
            self._write_events(conn, events, [update])
            return budget.state()

    def delete_budget(self, kind: str, key: str) -> bool:
        """Remove a budget (its held reservations no longer count against it)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                text("DELETE FROM budgets WHERE scope_kind = :kind AND scope_key = :key"),
                {"kind": kind, "key": key},
            )
            return bool(result.rowcount)

    def state(self, kind: str, key: str) -> BudgetState:
        """The budget of a scope as it stands (a period that rolled over reads as reset)."""
        scope = BudgetScope(kind, key)  # type: ignore[arg-type]
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    f"SELECT {_BUDGET_COLUMNS}, now() AS now FROM budgets "
                    "WHERE scope_kind = :kind AND scope_key = :key"
                ),
                {"kind": scope.kind, "key": scope.key},
            ).one_or_none()
        if row is None:
            raise BudgetNotFound(scope)
        return _Budget.from_row(row, row.now).state()

    def budgets(self, kind: str | None = None) -> list[BudgetState]:
        """Every budget (of one kind), by scope."""
        query = f"SELECT {_BUDGET_COLUMNS}, now() AS now FROM budgets"
        params: dict[str, Any] = {}
        if kind is not None:
            query += " WHERE scope_kind = :kind"
            params["kind"] = kind
        with self.engine.connect() as conn:
            rows = conn.execute(text(query + " ORDER BY scope_kind, scope_key"), params).all()
        return [_Budget.from_row(row, row.now).state() for row in rows]

    # -- reservations ---------------------------------------------------------------------------
    def reserve(
        self,
        scopes: Iterable[ScopeLike],
        amount_micros: int,
        *,
        lease_s: float | None = None,
        call_label: str = "",
        step_id: str | None = None,
        call_id: str | None = None,
    ) -> Reservation:
        """Hold ``amount_micros`` against every budget in ``scopes`` atomically, or raise
        ``BudgetExceeded`` naming the first of them (in the order given) without room.
        Pass scopes narrowest first (cell, notebook, team) so the message names the
        tightest budget that refused."""
        amount = check_amount(amount_micros)
        ordered = list(dict.fromkeys(as_scope(s) for s in scopes))
        if not ordered:
            raise ValueError("a reservation needs at least one budget")
        lease = self.default_lease_s if lease_s is None else float(lease_s)
        if not lease > 0:
            raise ValueError(f"a lease must be positive, got {lease_s!r}")
        args = (ordered, amount, lease, call_label, step_id, call_id)
        outcome, has_expired = self._reserve_once(*args)
        if isinstance(outcome, BudgetExceeded) and has_expired:
            # expired leases may be what fills the budget: free them, then try once more
            self.expire_leases()
            outcome, has_expired = self._reserve_once(*args)
        if has_expired:
            self.expire_leases()
        if isinstance(outcome, BudgetExceeded):
            raise outcome
        return outcome

    def _reserve_once(
        self,
        scopes: list[BudgetScope],
        amount: int,
        lease_s: float,
        call_label: str,
        step_id: str | None,
        call_id: str | None,
    ) -> tuple[Reservation | BudgetExceeded, bool]:
        reservation_id = str(uuid.uuid4())
        params = (
            text_array([s.kind for s in scopes]),
            text_array([s.key for s in scopes]),
            str(amount),
            reservation_id,
            repr(lease_s),
            step_id,
            call_id,
            call_label,
            self._budget_topic,
            "t" if self._probe_leases_now() else "f",
        )
        try:
            rows = self._hot.run_prepared(_RESERVE, params)
        except StatementFailed as exc:
            if exc.sqlstate != _REFUSED:
                raise
            detail = json.loads(exc.detail or "{}")
            return _refusal(scopes, amount, call_label, detail), bool(detail.get("has_expired"))
        lease_expires_at, has_expired = rows[0][1], bool(rows[0][2])
        by_scope = {}
        for row in rows:
            state = _state_from_payload(row[0])
            by_scope[state.scope] = state
        states = tuple(by_scope[scope] for scope in scopes)
        return (
            Reservation(
                id=reservation_id,
                amount_micros=amount,
                scopes=tuple(scopes),
                lease_expires_at=lease_expires_at,
                step_id=step_id,
                call_id=call_id,
                label=call_label,
                budgets=states,
            ),
            has_expired,
        )

    def _probe_leases_now(self) -> bool:
        """At most once per ``lease_probe_s`` a reserve also asks whether any lease has
        expired (then it frees them); a refused reserve always asks."""
        now = time.monotonic()
        if now < self._next_lease_probe:
            return False
        self._next_lease_probe = now + self.lease_probe_s
        return True

    def settle(
        self,
        reservation: Reservation | str,
        actual_micros: int,
        *,
        call: LlmCall | None = None,
    ) -> Settlement:
        """Spend ``actual_micros`` (the real cost) and free the rest of the reservation;
        record ``call`` in ``llm_calls``, add to the step's cost, announce thresholds, in
        one statement. Settling again changes nothing (Temporal may retry an activity)."""
        actual = check_amount(actual_micros)
        rid = reservation if isinstance(reservation, str) else reservation.id
        return self._finish_hot(rid, actual, call, op="settle")

    def release(self, reservation: Reservation | str) -> bool:
        """Free a reservation whose call never ran or failed; False if it was not held."""
        rid = reservation if isinstance(reservation, str) else reservation.id
        outcome = self._finish_hot(rid, 0, None, op="release")
        return not outcome.already_settled

    def extend_lease(self, reservation: Reservation | str, lease_s: float) -> bool:
        """Push a held reservation's lease to ``lease_s`` from now (long streamed calls)."""
        rid = reservation if isinstance(reservation, str) else reservation.id
        with self.engine.begin() as conn:
            result = conn.execute(
                text(
                    "UPDATE reservations SET lease_expires_at = now() + make_interval(secs => :s) "
                    "WHERE id = :rid AND state = 'held'"
                ),
                {"rid": rid, "s": float(lease_s)},
            )
            return bool(result.rowcount)

    def expire_leases(self, now: datetime | None = None, *, batch: int = 1000) -> int:
        """Release held reservations whose lease ended before ``now`` (database clock by
        default); returns how many this call expired. Safe from many processes at once:
        each reservation is expired by one statement, and only while still held."""
        with self.engine.connect() as conn:
            due = (
                conn.execute(
                    text(
                        "SELECT id FROM reservations WHERE state = 'held' "
                        "AND lease_expires_at < COALESCE(CAST(:now AS timestamptz), now()) "
                        "ORDER BY lease_expires_at LIMIT :batch"
                    ),
                    {"now": now, "batch": batch},
                )
                .scalars()
                .all()
            )
        expired = 0
        with self._autocommit() as conn:
            for rid in due:
                outcome = self._finish(conn, rid, 0, None, op="expire", lease_before=now)
                expired += 0 if outcome.already_settled else 1
        return expired

    # -- direct spend ---------------------------------------------------------------------------
    def charge_compute(
        self,
        step_id: str | None,
        cpu_seconds: float | Decimal | int,
        price_per_cpu_second_micros: int | Decimal = 0,
        *,
        scopes: Iterable[ScopeLike] = (),
        reservation: Reservation | str | None = None,
    ) -> Settlement:
        """Charge a step's sandbox CPU time against the same budgets as its LLM calls.

        With ``reservation`` (a compute worst case reserved when the step opened) it is
        settled at the real cost; without, the cost is spent on ``scopes`` directly (the
        CPU time is already used, so this may pass a limit; later calls are then
        refused). Recorded in ``compute_charges`` and the step's cost, atomically.
        """
        cost = compute_cost_micros(cpu_seconds, price_per_cpu_second_micros)
        wanted = list(dict.fromkeys(as_scope(s) for s in scopes))
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO compute_charges (step_id, cpu_seconds, "
                    "price_per_cpu_second_micros, cost_micros) "
                    "VALUES (:step_id, :seconds, :price, :cost)"
                ),
                {
                    "step_id": step_id,
                    "seconds": _decimal(cpu_seconds),
                    "price": Decimal(price_per_cpu_second_micros),
                    "cost": cost,
                },
            )
            if reservation is not None:
                rid = reservation if isinstance(reservation, str) else reservation.id
            else:
                # a zero hold on the scopes, settled at once in this same transaction
                rid = str(uuid.uuid4())
                ids = [
                    int(r.id)
                    for r in conn.execute(
                        text(
                            "SELECT id FROM budgets WHERE (scope_kind, scope_key) IN "
                            "(SELECT * FROM unnest(CAST(:kinds AS text[]), "
                            "CAST(:keys AS text[]))) ORDER BY id"
                        ),
                        {"kinds": [s.kind for s in wanted], "keys": [s.key for s in wanted]},
                    )
                ]
                if len(ids) < len(wanted):
                    found = {
                        BudgetScope(r.scope_kind, r.scope_key)
                        for r in conn.execute(
                            text(
                                "SELECT scope_kind, scope_key FROM budgets "
                                "WHERE id = ANY(CAST(:ids AS bigint[]))"
                            ),
                            {"ids": ids},
                        )
                    }
                    raise BudgetNotFound(next(s for s in wanted if s not in found))
                conn.execute(
                    text(
                        "INSERT INTO reservations (id, amount_micros, state, lease_expires_at, "
                        "step_id, label, budget_ids) VALUES (:rid, 0, 'held', "
                        "now() + interval '1 hour', :step_id, 'sandbox compute', "
                        "CAST(:ids AS bigint[]))"
                    ),
                    {"rid": rid, "step_id": step_id, "ids": ids},
                )
            return self._finish(conn, rid, cost, None, op="compute")

    def record_cached_call(self, step_id: str | None, call: LlmCall) -> None:
        """A call answered from the cache: $0 spent, ``call.saved_micros`` saved."""
        self.record_cached_calls([(step_id, call)])

    def record_cached_calls(self, calls: Sequence[tuple[str | None, LlmCall]]) -> None:
        """Cache hits (step id, call), all in one statement: a $0 ``llm_calls`` row and an
        ``llm.call`` outbox event each (the events are built by Postgres, as ``wflo_finish``
        builds a paid call's, so a batch costs the host one JSON encoding)."""
        if not calls:
            return
        rows = [self._call_row(call, step_id, None, 0) for step_id, call in calls]
        with self.engine.begin() as conn:
            conn.execute(
                _INSERT_CACHED_CALLS,
                {"calls": json.dumps(rows, separators=(",", ":")), "topic": self._llm_topic},
            )

    # -- live feed ------------------------------------------------------------------------------
    def watch(
        self, kind: str, key: str, *, timeout: float | None = None, initial: bool = True
    ) -> Iterator[BudgetState]:
        """Yield the budget's state now (``initial``) and after every money move on it, from
        any process. Ends after ``timeout`` seconds without an update (``None``: never);
        closing the iterator closes its connection."""
        import psycopg

        scope = BudgetScope(kind, key)  # type: ignore[arg-type]
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        kwargs.pop("context", None)
        conn = psycopg.connect(*args, **kwargs, autocommit=True)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            if initial:  # read after LISTEN: no update can fall between the two
                yield self.state(scope.kind, scope.key)
            while True:
                received = False
                for note in conn.notifies(timeout=timeout, stop_after=1):
                    received = True
                    try:
                        payload = json.loads(note.payload)
                    except json.JSONDecodeError:
                        continue
                    if payload.get("kind") == scope.kind and payload.get("key") == scope.key:
                        yield _state_from_payload(payload)
                if not received:
                    return
        finally:
            conn.close()

    # -- internals ------------------------------------------------------------------------------
    def _finish(
        self,
        conn: Connection,
        rid: str,
        actual: int,
        call: LlmCall | None,
        *,
        op: str,
        lease_before: datetime | None = None,
    ) -> Settlement:
        """``wflo_finish`` inside the caller's SQLAlchemy transaction."""
        params = self._finish_params(rid, actual, call, op, lease_before)
        rows = conn.execute(_FINISH, params).all()
        return self._settlement(rows, rid, actual, op)

    def _finish_hot(self, rid: str, actual: int, call: LlmCall | None, *, op: str) -> Settlement:
        """``wflo_finish`` as its own transaction, on a hot connection (a retry after a dead
        connection is harmless: a finished reservation is not finished twice)."""
        named = self._finish_params(rid, actual, call, op, None)
        params = (
            rid,
            str(actual),
            op,
            text_array(named["from_states"]),
            named["to_state"],
            "t" if named["check_lease"] else "f",
            None,
            self._budget_topic,
            self._llm_topic,
            named["call"],
        )
        rows = [_FinishRow(*row) for row in self._hot.run_prepared(_FINISH_HOT, params)]
        return self._settlement(rows, rid, actual, op)

    def _finish_params(
        self,
        rid: str,
        actual: int,
        call: LlmCall | None,
        op: str,
        lease_before: datetime | None,
    ) -> dict[str, Any]:
        if op in ("settle", "compute"):
            from_states, to_state = ["held", "expired"], "settled"
        elif op == "release":
            from_states, to_state = ["held"], "released"
        else:
            from_states, to_state = ["held"], "expired"
        call_json = None
        if call is not None:
            fields = self._call_row(call, None, rid, actual)
            call_json = json.dumps({k: v for k, v in fields.items() if k in _CALL_COLUMNS})
        return {
            "rid": rid,
            "actual": actual,
            "op": op,
            "from_states": from_states,
            "to_state": to_state,
            "check_lease": op == "expire",
            "lease_before": lease_before,
            "budget_topic": self._budget_topic,
            "llm_topic": self._llm_topic,
            "call": call_json,
        }

    @staticmethod
    def _settlement(rows: Sequence[Any], rid: str, actual: int, op: str) -> Settlement:
        """What ``wflo_finish``'s rows say happened."""
        first = rows[0]
        if first.from_state is None:  # nothing was held (or the reservation is unknown)
            if first.seen_state is None:
                raise ReservationNotFound(rid)
            return Settlement(
                reservation_id=rid,
                actual_micros=int(first.seen_actual or 0),
                released_micros=0,
                budgets=(),
                already_settled=True,
            )
        late = first.from_state == "expired"
        held = int(first.held)
        budgets: list[BudgetState] = []
        crossed: list[ThresholdCrossed] = []
        for row in rows:
            if row.id is None:
                continue
            state = _state_from_row(
                row, int(row.spent_micros), int(row.thresholds_emitted), row.period_start
            )
            budgets.append(state)
            for threshold in crossed_thresholds(
                state.limit_micros, int(row.spent_before), state.spent_micros, int(row.mask_before)
            ):
                crossed.append(ThresholdCrossed(state.scope, threshold, state))
        released = held if op in ("release", "expire") else max(0, held - actual)
        return Settlement(
            reservation_id=rid,
            actual_micros=actual,
            released_micros=released,
            budgets=tuple(budgets),
            thresholds=tuple(crossed),
            late=late,
        )

    @staticmethod
    def _call_row(
        call: LlmCall, step_id: str | None, reservation_id: str | None, cost: int
    ) -> dict[str, Any]:
        usage = call.usage
        return {
            "id": call.id,
            "step_id": step_id,
            "reservation_id": reservation_id,
            "provider": call.provider,
            "model": call.model,
            "endpoint": call.endpoint,
            "input_tokens": usage.input,
            "cache_read_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write_total,
            "output_tokens": usage.output,
            "reasoning_tokens": usage.reasoning,
            "cost_micros": cost,
            "saved_micros": check_amount(call.saved_micros),
            "cached": call.cached,
            "simulated": call.simulated,
            "latency_ms": call.latency_ms,
            "request_hash": call.request_hash,
        }

    @staticmethod
    def _write_events(
        conn: Connection, events: Sequence[Event], notes: Sequence[Mapping[str, Any]]
    ) -> None:
        conn.execute(
            text(
                """
                WITH events AS (
                    INSERT INTO outbox (event_id, event_type, topic, key, envelope)
                    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:types AS text[]),
                                         CAST(:topics AS text[]), CAST(:keys AS text[]),
                                         CAST(:envelopes AS jsonb[]))
                )
                SELECT pg_notify(:channel, n) FROM unnest(CAST(:notes AS text[])) AS n
                """
            ),
            {
                "ids": [e.id for e in events],
                "types": [e.type for e in events],
                "topics": [e.topic for e in events],
                "keys": [e.key for e in events],
                "envelopes": [e.to_json().decode() for e in events],
                "notes": [json.dumps(n, separators=(",", ":")) for n in notes],
                "channel": NOTIFY_CHANNEL,
            },
        )


# llm_calls columns the caller provides (step, reservation, cost and time come from SQL)
_CALL_COLUMNS = frozenset(
    {
        "id",
        "provider",
        "model",
        "endpoint",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "saved_micros",
        "cached",
        "simulated",
        "latency_ms",
        "request_hash",
    }
)
