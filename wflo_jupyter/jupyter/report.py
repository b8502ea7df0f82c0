"""``%wflo report``: cost per step as a pandas DataFrame, and a bar chart of it.

Money columns are named ``... (USD)``, never with a ``$``: a ``$`` pair in a table's HTML
is typeset as TeX by a front end's MathJax. The frame also renders its HTML with pandas'
``display.html.use_mathjax`` off, so a step's name with ``$`` in it shows as written.
Imported on first use (pandas and matplotlib load then, not at ``%load_ext``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from wflo_jupyter.core.money import micros_to_usd
from wflo_jupyter.core.reports import StepCostRow

COST_COLUMNS = ("LLM cost (USD)", "compute cost (USD)", "cost (USD)", "saved (USD)")


class CostReport(pd.DataFrame):  # type: ignore[misc]  # pandas is untyped here
    """A DataFrame whose HTML MathJax leaves alone; anything derived from it is a plain
    ``DataFrame`` (pandas' default constructor)."""

    def _repr_html_(self) -> Any:
        with pd.option_context("display.html.use_mathjax", False):
            return super()._repr_html_()


def report_frame(rows: Sequence[StepCostRow]) -> pd.DataFrame:
    """One row per step: calls, tokens by kind, cost, cache savings, duration."""
    records = [
        {
            "step": r.seq,
            "name": r.name,
            "status": r.status,
            "calls": r.calls,
            "cached calls": r.cached_calls,
            "simulated calls": r.simulated_calls,
            "input tokens": r.input_tokens,
            "cache-read tokens": r.cache_read_tokens,
            "cache-write tokens": r.cache_write_tokens,
            "output tokens": r.output_tokens,
            "reasoning tokens": r.reasoning_tokens,
            "LLM cost (USD)": float(micros_to_usd(r.llm_cost_micros)),
            "compute cost (USD)": float(micros_to_usd(r.compute_cost_micros)),
            "cost (USD)": float(micros_to_usd(r.cost_micros)),
            "saved (USD)": float(micros_to_usd(r.saved_micros)),
            "duration s": (r.duration_ms or 0) / 1000,
        }
        for r in rows
    ]
    if not records:
        return CostReport()
    return CostReport(pd.DataFrame.from_records(records).set_index("step"))


def cost_chart(frame: pd.DataFrame) -> None:
    """A bar chart of cost per step (and cache savings), shown in the cell."""
    if frame.empty:
        return
    from IPython.display import publish_display_data
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.0, 0.5 * len(frame) + 2), 3))
    axes = figure.subplots()
    # a "$" in a step's name is a "$", not matplotlib's mathtext
    labels = [
        f"{i} {n}"[:24].replace("$", r"\$") for i, n in zip(frame.index, frame["name"], strict=True)
    ]
    axes.bar(labels, frame["cost (USD)"], label="cost")
    axes.bar(
        labels, frame["saved (USD)"], bottom=frame["cost (USD)"], label="saved by cache", alpha=0.5
    )
    axes.set_ylabel("USD")
    axes.set_title("cost per step")
    axes.tick_params(axis="x", labelrotation=45)
    axes.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    total = float(frame["cost (USD)"].sum())
    saved = float(frame["saved (USD)"].sum())
    steps = f"{len(frame)} step{'s' if len(frame) != 1 else ''}"
    publish_display_data(
        {
            "image/png": base64.b64encode(png.getvalue()).decode("ascii"),
            "text/plain": f"[chart: cost per step, {steps}: {total:g} USD, {saved:g} USD saved]",
        }
    )
