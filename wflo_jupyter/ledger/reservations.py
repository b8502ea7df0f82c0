"""Reservations: holding a call's worst case against every enclosing budget at once
(``reserve``), then settling it at the real cost, releasing it, extending or expiring its
lease. Never overspent, never deadlocked:

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

Why it cannot deadlock: every operation of the ledger takes its locks in one global
order: at most one reservation row, then the step row, then budget rows in lock order:
cell, then notebook, then team (and any other kind), ties by ascending id. (Expiry
ends one reservation per statement.) ``NO KEY UPDATE`` (what these updates take) does
not conflict with the ``KEY SHARE`` locks that foreign-key checks of concurrent inserts
take. Each row is locked by one statement and updated by a later one (or locked by the
UPDATE itself): a single SQL statement that locks a row in one CTE and updates it in
another re-locks the newest row version and can deadlock on the tuple lock under
contention (seen while building this, so none of the statements here do that).

Settle, release and expiry go through ``wflo_finish`` (``ledger.finish``).

Leases: a reservation is held until ``lease_expires_at`` (database clock). A ``reserve``
notices expired leases (at most once a second per ledger, and always when it is refused)
and frees them (``expire_leases``), so a crashed kernel's reservations free themselves.
A call that finishes after its lease expired is still settled: the money was spent, and
the ledger records it (``Settlement.late``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from wflo_jupyter.core.budget import BudgetExceeded, BudgetNotFound, BudgetScope, check_amount
from wflo_jupyter.ledger.budget_rows import state_from_payload
from wflo_jupyter.ledger.budget_types import (
    Reservation,
    ScopeLike,
    Settlement,
    as_scope,
    reservation_id,
)
from wflo_jupyter.ledger.calls import LlmCall
from wflo_jupyter.ledger.finish import Finisher
from wflo_jupyter.ledger.hot import HotConnections, HotStatement, StatementFailed, text_array

__all__ = ["DEFAULT_LEASE_S", "Reservations"]

DEFAULT_LEASE_S = 300.0

# the hot path's statement (ledger/hot.py)
_RESERVE = HotStatement(
    "wflo_hot_reserve",
    "SELECT payload, lease_expires_at, has_expired FROM wflo_reserve($1::text[], $2::text[], "
    "$3::bigint, $4::text, $5::double precision, $6::text, $7::text, $8::text, $9::text, "
    "$10::boolean)",
    ("json", "timestamptz", "bool"),
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


class Reservations:
    """Reserve, settle, release, extend and expire on one engine (thread-safe)."""

    def __init__(
        self,
        engine: Engine,
        hot: HotConnections,
        finisher: Finisher,
        *,
        default_lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.engine = engine
        self.default_lease_s = default_lease_s
        self._hot = hot  # reserve / settle / release: one statement each
        self._finisher = finisher
        self.lease_probe_s = 1.0  # how often a reserve asks whether leases have expired
        self._next_lease_probe = 0.0

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
        """See ``BudgetLedger.reserve``."""
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
        new_id = str(uuid.uuid4())
        params = (
            text_array([s.kind for s in scopes]),
            text_array([s.key for s in scopes]),
            str(amount),
            new_id,
            repr(lease_s),
            step_id,
            call_id,
            call_label,
            self._finisher.budget_topic,
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
            state = state_from_payload(row[0])
            by_scope[state.scope] = state
        states = tuple(by_scope[scope] for scope in scopes)
        return (
            Reservation(
                id=new_id,
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
        """See ``BudgetLedger.settle``."""
        actual = check_amount(actual_micros)
        return self._finisher.hot(reservation_id(reservation), actual, call, op="settle")

    def release(self, reservation: Reservation | str) -> bool:
        """See ``BudgetLedger.release``."""
        outcome = self._finisher.hot(reservation_id(reservation), 0, None, op="release")
        return not outcome.already_settled

    def release_step(self, step_id: str) -> int:
        """See ``BudgetLedger.release_step``."""
        with self.engine.connect() as conn:
            held = (
                conn.execute(
                    text("SELECT id FROM reservations WHERE step_id = :sid AND state = 'held'"),
                    {"sid": step_id},
                )
                .scalars()
                .all()
            )
        return sum(1 for rid in held if self.release(rid))

    def extend_lease(self, reservation: Reservation | str, lease_s: float) -> bool:
        """See ``BudgetLedger.extend_lease``."""
        with self.engine.begin() as conn:
            result = conn.execute(
                text(
                    "UPDATE reservations SET lease_expires_at = now() + make_interval(secs => :s) "
                    "WHERE id = :rid AND state = 'held'"
                ),
                {"rid": reservation_id(reservation), "s": float(lease_s)},
            )
            return bool(result.rowcount)

    def expire_leases(self, now: datetime | None = None, *, batch: int = 1000) -> int:
        """See ``BudgetLedger.expire_leases``."""
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
        # a connection whose every statement is its own transaction (one round trip)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for rid in due:
                outcome = self._finisher.in_transaction(
                    conn, rid, 0, None, op="expire", lease_before=now
                )
                expired += 0 if outcome.already_settled else 1
        return expired
