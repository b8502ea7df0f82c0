"""Ending a reservation through ``wflo_finish``: settle, release, expire, and the settle of
a sandbox compute charge, each one statement, and the ``Settlement`` its rows describe.

``wflo_finish`` (a PL/pgSQL function, migrations 0002-0005): lock the reservation row,
mark it, add the step's cost and write the ``llm_calls`` row and its event, then lock its
budgets (in lock order: cell, notebook, team; then id), roll a finished day/month period
over, spend and free the rest, announce thresholds, write the budget events and
``pg_notify``. A reservation that is no longer held is not finished twice: the statement
then changes nothing and says what it saw (``Settlement.already_settled``).

Two ways to run it: ``hot`` (its own transaction, a prepared statement on a
``HotConnections`` connection: settle and release) and ``in_transaction`` (inside the
caller's SQLAlchemy transaction: expiry and compute charges).
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from wflo_jupyter.core.budget import BudgetState, crossed_thresholds
from wflo_jupyter.core.events import BUDGET_UPDATED, LLM_CALL, topic_for
from wflo_jupyter.ledger.budget_rows import state_from_row
from wflo_jupyter.ledger.budget_types import ReservationNotFound, Settlement, ThresholdCrossed
from wflo_jupyter.ledger.calls import CALL_COLUMNS, LlmCall, call_row
from wflo_jupyter.ledger.hot import HotConnections, HotStatement, text_array

__all__ = ["Finisher"]

_FINISH = text(
    "SELECT * FROM wflo_finish(CAST(:rid AS text), CAST(:actual AS bigint), "
    "CAST(:op AS text), CAST(:from_states AS text[]), CAST(:to_state AS text), "
    "CAST(:check_lease AS boolean), CAST(:lease_before AS timestamptz), "
    "CAST(:budget_topic AS text), CAST(:llm_topic AS text), CAST(:call AS jsonb))"
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


class Finisher:
    """``wflo_finish`` for one ledger (its hot connections and its event topics)."""

    def __init__(self, hot: HotConnections) -> None:
        self._hot = hot
        self.budget_topic = topic_for(BUDGET_UPDATED)
        self.llm_topic = topic_for(LLM_CALL)

    def in_transaction(
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
        params = self._params(rid, actual, call, op, lease_before)
        rows = conn.execute(_FINISH, params).all()
        return _settlement(rows, rid, actual, op)

    def hot(self, rid: str, actual: int, call: LlmCall | None, *, op: str) -> Settlement:
        """``wflo_finish`` as its own transaction, on a hot connection (a retry after a dead
        connection is harmless: a finished reservation is not finished twice)."""
        named = self._params(rid, actual, call, op, None)
        params = (
            rid,
            str(actual),
            op,
            text_array(named["from_states"]),
            named["to_state"],
            "t" if named["check_lease"] else "f",
            None,
            self.budget_topic,
            self.llm_topic,
            named["call"],
        )
        rows = [_FinishRow(*row) for row in self._hot.run_prepared(_FINISH_HOT, params)]
        return _settlement(rows, rid, actual, op)

    def _params(
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
            fields = call_row(call, None, rid, actual)
            call_json = json.dumps({k: v for k, v in fields.items() if k in CALL_COLUMNS})
        return {
            "rid": rid,
            "actual": actual,
            "op": op,
            "from_states": from_states,
            "to_state": to_state,
            "check_lease": op == "expire",
            "lease_before": lease_before,
            "budget_topic": self.budget_topic,
            "llm_topic": self.llm_topic,
            "call": call_json,
        }


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
        state = state_from_row(
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
