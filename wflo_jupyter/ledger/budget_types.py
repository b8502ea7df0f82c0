"""The values the budget ledger takes and returns: scopes as callers name them, a held
``Reservation``, the ``Settlement`` of a money move with the ``ThresholdCrossed`` it
announced, and ``ReservationNotFound``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from wflo_jupyter.core.budget import BudgetScope, BudgetState
from wflo_jupyter.core.errors import WfloError

__all__ = [
    "Reservation",
    "ReservationNotFound",
    "ScopeLike",
    "Settlement",
    "ThresholdCrossed",
    "as_scope",
    "reservation_id",
]

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


def reservation_id(reservation: Reservation | str) -> str:
    """The id of a reservation given as itself or as its id."""
    return reservation if isinstance(reservation, str) else reservation.id


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
