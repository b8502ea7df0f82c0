"""Sandbox compute charges: a step's CPU time, priced per CPU-second
(``core.pricing.compute_cost_micros``), recorded in ``compute_charges`` and charged
against the same budgets as its LLM calls, atomically, through ``wflo_finish``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import Engine, text

from wflo_jupyter.core.budget import BudgetNotFound, BudgetScope
from wflo_jupyter.core.pricing import compute_cost_micros, exact_seconds
from wflo_jupyter.ledger.budget_types import (
    Reservation,
    ScopeLike,
    Settlement,
    as_scope,
    reservation_id,
)
from wflo_jupyter.ledger.finish import Finisher

__all__ = ["ComputeCharges"]


class ComputeCharges:
    """Charges sandbox CPU time on one engine (thread-safe)."""

    def __init__(self, engine: Engine, finisher: Finisher) -> None:
        self.engine = engine
        self._finisher = finisher

    def charge_compute(
        self,
        step_id: str | None,
        cpu_seconds: float | Decimal | int,
        price_per_cpu_second_micros: int | Decimal = 0,
        *,
        scopes: Iterable[ScopeLike] = (),
        reservation: Reservation | str | None = None,
    ) -> Settlement:
        """See ``BudgetLedger.charge_compute``."""
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
                    "seconds": exact_seconds(cpu_seconds),
                    "price": Decimal(price_per_cpu_second_micros),
                    "cost": cost,
                },
            )
            if reservation is not None:
                rid = reservation_id(reservation)
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
            return self._finisher.in_transaction(conn, rid, cost, None, op="compute")
