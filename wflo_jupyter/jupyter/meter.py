"""``%wflo meter``: the live budget widget, updated from Postgres NOTIFY whenever money
moves (from this kernel or any other sharing a team budget).

An ``ipywidgets.HTML`` whose mime bundle also carries the budget lines as ``text/plain``
and a snapshot as ``text/html``, so a front end without widgets (a terminal, a saved
notebook on a site) still reads it. Imported on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import ipywidgets

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.jupyter.display import NO_LIMIT_MICROS, budget_line, escape_html, html_block
from wflo_jupyter.session import WfloSession


def meter_html(states: Sequence[BudgetState]) -> str:
    """Each budget's line and a bar of spent + reserved against its limit."""
    rows = []
    for state in states:
        limited = state.limit_micros < NO_LIMIT_MICROS
        used = state.spent_micros + state.reserved_micros
        percent = min(100.0, 100 * used / max(1, state.limit_micros)) if limited else 0.0
        colour = "#c0392b" if percent >= 90 else "#e67e22" if percent >= 75 else "#2e86c1"
        bar = (
            f'<div style="background:#eee;width:220px;height:8px;border-radius:4px">'
            f'<div style="background:{colour};width:{percent:.1f}%;height:8px;'
            f'border-radius:4px"></div></div>'
            if limited
            else ""
        )
        rows.append(f"<div style='margin:2px 0'>{escape_html(budget_line(state))}{bar}</div>")
    return html_block("".join(rows), "wflo-meter")


class BudgetMeter(ipywidgets.HTML):  # type: ignore[misc]  # ipywidgets is untyped
    """The widget; ``text`` is what it shows, as plain lines."""

    def __init__(self, states: Sequence[BudgetState]) -> None:
        super().__init__(value=meter_html(states))
        self.text = "\n".join(budget_line(s) for s in states)

    def show(self, states: Sequence[BudgetState]) -> None:
        self.text = "\n".join(budget_line(s) for s in states)
        self.value = meter_html(states)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = self.text
            bundle["text/html"] = self.value
        return bundle


def meter(session: WfloSession) -> BudgetMeter:
    """A live budget widget, followed by a ``wflo-meter`` thread until the session closes."""
    widget = BudgetMeter(session.budget_states())

    def follow() -> None:
        while not session.closed:
            try:
                for _state in session.watch_notebook_budget(timeout_s=5.0):
                    widget.show(session.budget_states())
                    if session.closed:
                        return
                widget.show(session.budget_states())  # team budgets too
            except Exception:
                if session.closed:
                    return
                threading.Event().wait(2.0)

    threading.Thread(target=follow, name="wflo-meter", daemon=True).start()
    return widget
