"""``BudgetLedger``: budgets, reservations and spend in PostgreSQL, never overspent.

A thin front over the parts, one ``Engine`` (and one set of hot connections) shared:

- ``ledger.budget_admin``: set, change, delete and read budgets (cell, notebook, team);
- ``ledger.reservations``: the atomic reserve (its protocol and why it can neither
  overspend nor deadlock), settle, release, leases and their expiry;
- ``ledger.finish``: ``wflo_finish``, which ends a reservation (settle, release, expiry,
  compute) and says what it did (``Settlement``);
- ``ledger.compute_charges``: sandbox CPU time charged against the same budgets;
- ``ledger.calls``: ``LlmCall``, its ``llm_calls`` row, cache hits;
- ``ledger.feed``: the live feed (``pg_notify('wflo_budget', ...)`` on every money move;
  ``watch`` listens);
- ``ledger.budget_rows`` / ``ledger.budget_types``: row mapping and the result types.

Period resets (``day`` / ``month``, UTC) happen lazily on the first money move of a new
period: spent and the emitted thresholds go back to zero; reserved money stays held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.ledger.budget_admin import BudgetAdmin
from wflo_jupyter.ledger.budget_types import Reservation, ScopeLike, Settlement
from wflo_jupyter.ledger.calls import LlmCall, record_cached_calls
from wflo_jupyter.ledger.compute_charges import ComputeCharges
from wflo_jupyter.ledger.feed import BudgetFeed
from wflo_jupyter.ledger.finish import Finisher
from wflo_jupyter.ledger.hot import HotConnections
from wflo_jupyter.ledger.reservations import DEFAULT_LEASE_S, Reservations

__all__ = ["BudgetLedger"]


class BudgetLedger:
    """Budget operations on one SQLAlchemy ``Engine`` (thread-safe; share it)."""

    def __init__(self, engine: Engine, *, default_lease_s: float = DEFAULT_LEASE_S) -> None:
        self.engine = engine
        self._hot = HotConnections(engine)  # reserve / settle / release: one statement each
        self._finisher = Finisher(self._hot)
        self._admin = BudgetAdmin(engine)
        self._reservations = Reservations(
            engine, self._hot, self._finisher, default_lease_s=default_lease_s
        )
        self._compute = ComputeCharges(engine, self._finisher)
        self._feed = BudgetFeed(engine, self._admin.state)

    @property
    def default_lease_s(self) -> float:
        """The lease of a reservation made without ``lease_s``."""
        return self._reservations.default_lease_s

    @default_lease_s.setter
    def default_lease_s(self, value: float) -> None:
        self._reservations.default_lease_s = value

    @property
    def lease_probe_s(self) -> float:
        """How often a reserve asks whether leases have expired."""
        return self._reservations.lease_probe_s

    @lease_probe_s.setter
    def lease_probe_s(self, value: float) -> None:
        self._reservations.lease_probe_s = value

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

    # -- budgets --------------------------------------------------------------------------------
    def set_budget(
        self, kind: str, key: str, limit_micros: int, period: str = "none"
    ) -> BudgetState:
        """Create or change the budget of a scope; money spent and reserved is kept. A
        lowered limit announces thresholds it now passes; a raised one re-arms them."""
        return self._admin.set_budget(kind, key, limit_micros, period)

    def delete_budget(self, kind: str, key: str) -> bool:
        """Remove a budget (its held reservations no longer count against it)."""
        return self._admin.delete_budget(kind, key)

    def state(self, kind: str, key: str) -> BudgetState:
        """The budget of a scope as it stands (a period that rolled over reads as reset)."""
        return self._admin.state(kind, key)

    def budgets(self, kind: str | None = None) -> list[BudgetState]:
        """Every budget (of one kind), by scope."""
        return self._admin.budgets(kind)

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
        return self._reservations.reserve(
            scopes,
            amount_micros,
            lease_s=lease_s,
            call_label=call_label,
            step_id=step_id,
            call_id=call_id,
        )

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
        return self._reservations.settle(reservation, actual_micros, call=call)

    def release(self, reservation: Reservation | str) -> bool:
        """Free a reservation whose call never ran or failed; False if it was not held."""
        return self._reservations.release(reservation)

    def release_step(self, step_id: str) -> int:
        """Release every reservation ``step_id`` still holds (a cancelled step's calls in
        flight: their money is freed now, not when the lease ends); how many it freed."""
        return self._reservations.release_step(step_id)

    def extend_lease(self, reservation: Reservation | str, lease_s: float) -> bool:
        """Push a held reservation's lease to ``lease_s`` from now (long streamed calls)."""
        return self._reservations.extend_lease(reservation, lease_s)

    def expire_leases(self, now: datetime | None = None, *, batch: int = 1000) -> int:
        """Release held reservations whose lease ended before ``now`` (database clock by
        default); returns how many this call expired. Safe from many processes at once:
        each reservation is expired by one statement, and only while still held."""
        return self._reservations.expire_leases(now, batch=batch)

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
        return self._compute.charge_compute(
            step_id,
            cpu_seconds,
            price_per_cpu_second_micros,
            scopes=scopes,
            reservation=reservation,
        )

    def record_cached_call(self, step_id: str | None, call: LlmCall) -> None:
        """A call answered from the cache: $0 spent, ``call.saved_micros`` saved."""
        self.record_cached_calls([(step_id, call)])

    def record_cached_calls(self, calls: Sequence[tuple[str | None, LlmCall]]) -> None:
        """Cache hits (step id, call), all in one statement: a $0 ``llm_calls`` row and an
        ``llm.call`` outbox event each (the events are built by Postgres, as ``wflo_finish``
        builds a paid call's, so a batch costs the host one JSON encoding)."""
        record_cached_calls(self.engine, calls, self._finisher.llm_topic)

    # -- live feed ------------------------------------------------------------------------------
    def follow(
        self,
        on_state: Callable[[BudgetState], None],
        stop: threading.Event,
        *,
        tick_s: float = 0.5,
    ) -> None:
        """Every budget state any process notifies, to ``on_state``, until ``stop``."""
        self._feed.follow(on_state, stop, tick_s=tick_s)

    def watch(
        self, kind: str, key: str, *, timeout: float | None = None, initial: bool = True
    ) -> Iterator[BudgetState]:
        """Yield the budget's state now (``initial``) and after every money move on it, from
        any process. Ends after ``timeout`` seconds without an update (``None``: never);
        closing the iterator closes its connection."""
        return self._feed.watch(kind, key, timeout=timeout, initial=initial)
