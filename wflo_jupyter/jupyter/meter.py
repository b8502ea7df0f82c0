"""``BudgetMeter``: the live budget widget (anywidget: synced traits and an ES module, no
hand-written comm).

For each enclosing budget (the cell's, the notebook's, each team's) it shows spent,
reserved and limit as a bar coloured at 50/75/90%; then this cell's cost and cache
savings, and the latest calls (model, tokens, cost, cached or not). Its traits are set
from the session's one ``MeterFeed`` per kernel (Postgres NOTIFY, from any kernel); the
widget itself runs no thread. ``compact`` is the one-line form shown under a ``%%wflo``
cell that spent money. Its ``text/plain`` is a readable summary, for front ends without
widgets (nbconvert, consoles, CI logs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.core.money import format_usd
from wflo_jupyter.core.reports import MeterSnapshot

NO_LIMIT_MICROS = 10**15  # a budget this large is "no limit"

HERE = Path(__file__).parent
Subscribe = Callable[[Callable[[MeterSnapshot], None]], Callable[[], None]]


def budget_name(state: BudgetState) -> str:
    scope = state.scope
    return f"team {scope.key}" if scope.kind == "team" else f"{scope.kind} budget"


def snapshot_traits(snapshot: MeterSnapshot) -> dict[str, Any]:
    """The widget's trait values for ``snapshot`` (plain JSON: integers of micro-USD)."""
    return {
        "budgets": [
            {
                "name": budget_name(s),
                "kind": s.scope.kind,
                "key": s.scope.key,
                "limit_micros": s.limit_micros,
                "spent_micros": s.spent_micros,
                "reserved_micros": s.reserved_micros,
            }
            for s in snapshot.budgets
        ],
        "cell": {
            "name": snapshot.cell_name or "",
            "cost_micros": snapshot.cell_cost_micros,
            "saved_micros": snapshot.cell_saved_micros,
        },
        "calls": [
            {
                "model": c.model,
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
                "cost_micros": c.cost_micros,
                "saved_micros": c.saved_micros,
                "cached": c.cached,
                "simulated": c.simulated,
            }
            for c in snapshot.calls
        ],
    }


class BudgetMeter(anywidget.AnyWidget):
    """The live budget widget; ``follow(session)`` keeps it current."""

    _esm = HERE / "meter.js"
    _css = HERE / "meter.css"
    budgets = traitlets.List(traitlets.Dict()).tag(sync=True)
    cell = traitlets.Dict().tag(sync=True)
    calls = traitlets.List(traitlets.Dict()).tag(sync=True)
    compact = traitlets.Bool(False).tag(sync=True)

    def __init__(self, snapshot: MeterSnapshot, *, compact: bool = False) -> None:
        super().__init__(compact=compact, **snapshot_traits(snapshot))
        self._unsubscribe: Callable[[], None] | None = None

    def show(self, snapshot: MeterSnapshot) -> None:
        """Set the traits from ``snapshot`` (from the feed's thread; traits sync)."""
        with self.hold_sync():
            for name, value in snapshot_traits(snapshot).items():
                setattr(self, name, value)

    def follow(
        self, subscribe: Callable[[Callable[[MeterSnapshot], None]], Callable[[], None]]
    ) -> None:
        """Update from ``subscribe`` (the session's meter feed) until ``close``."""
        self._unsubscribe = subscribe(self.show)

    def stop_following(self) -> None:
        """Keep the numbers shown now; take no more updates."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def close(self) -> None:
        self.stop_following()
        super().close()

    def summary(self) -> str:
        """One line per budget and the cell, as ``text/plain``."""
        lines = []
        for b in self.budgets:
            spent, reserved = format_usd(b["spent_micros"]), format_usd(b["reserved_micros"])
            if b["limit_micros"] >= NO_LIMIT_MICROS:
                lines.append(f"{b['name']}: {spent} spent (no limit)")
            else:
                lines.append(
                    f"{b['name']}: {spent} spent, {reserved} reserved "
                    f"of {format_usd(b['limit_micros'])}"
                )
        if self.cell.get("name"):
            saved = self.cell.get("saved_micros", 0)
            lines.append(
                f"cell {self.cell['name']}: {format_usd(self.cell.get('cost_micros', 0))}"
                + (f", saved {format_usd(saved)} by the cache" if saved else "")
            )
        return "\n".join(f"[wflo] {line}" for line in lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            data, metadata = bundle
            return {**data, "text/plain": self.summary()}, metadata
        if isinstance(bundle, dict):
            return {**bundle, "text/plain": self.summary()}
        return bundle
