"""How results show in the notebook: streams, the one-line failure, tables."""

from __future__ import annotations

import html
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.error import StdinNotImplementedError
from IPython.display import HTML, publish_display_data

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.core.money import format_usd, micros_to_usd
from wflo_jupyter.core.reports import CacheReport, OutputEvent, StepCostRow, StepSummary
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.session import WfloSession

if TYPE_CHECKING:
    import pandas as pd


def show_event(event: OutputEvent) -> None:
    """Render one live output event of the sandbox in the running cell."""
    kind, first, second = event
    if kind == "stream":
        stream = sys.stderr if first == "stderr" else sys.stdout
        stream.write(second)
        stream.flush()
    elif kind == "display":
        publish_display_data(first, second or {})
    elif kind == "notice":
        sys.stderr.write(f"[wflo] {first}\n")
        sys.stderr.flush()


def ask(question: str) -> bool | None:
    """Ask on the kernel's stdin channel: True for y / yes; None when this run has no
    stdin (nbclient, ``wflo demo``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        answer = input(question)
    except (StdinNotImplementedError, EOFError):
        return None
    return answer.strip().lower() in ("y", "yes")


def show_estimate(lines: Sequence[str]) -> None:
    """A dry run's report (``%%wflo --estimate``), on stdout."""
    print("\n".join(lines), flush=True)


def show_result(result: StepResult) -> None:
    """After the step: the sandbox traceback of a failed cell, on stderr."""
    if not result.ok and result.traceback:
        sys.stderr.write(
            result.traceback if result.traceback.endswith("\n") else result.traceback + "\n"
        )
        sys.stderr.flush()


def failure_line(result: StepResult) -> str:
    """``ZeroDivisionError: division by zero (in the sandbox)``; a limit or a dead sandbox
    names itself: ``... (in the sandbox: timeout)``."""
    what = f"{result.error_name}: {result.error_value}" if result.error_name else result.error_value
    where = "" if result.exit_reason == "error" else f": {result.exit_reason}"
    return f"{what or 'the cell failed'} (in the sandbox{where})"


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def steps_table(steps: Sequence[StepSummary]) -> HTML:
    rows = [
        (
            s.seq,
            s.name,
            s.status,
            s.exit_reason or "",
            f"{(s.duration_ms or 0) / 1000:.2f} s",
            format_usd(s.cost_micros),
            s.workflow_id or "",
        )
        for s in steps
    ]
    return HTML(_html_table(("#", "name", "status", "exit", "duration", "cost", "workflow"), rows))


def events_table(events: Sequence[dict[str, Any]]) -> HTML:
    rows = [
        (
            str(e.get("occurred_at", ""))[:23].replace("T", " "),
            e.get("type", ""),
            e.get("key", "")[:8],
            ", ".join(
                f"{k}={v}"
                for k, v in sorted(e.get("payload", {}).items())
                if k in ("name", "status", "exit_reason", "cost_micros", "seq")
            ),
            "yes" if e.get("sent") else "pending",
        )
        for e in events
    ]
    return HTML(_html_table(("time", "type", "subject", "details", "in Kafka"), rows))


def status(rows: Sequence[tuple[str, str]]) -> HTML:
    """``%wflo status``: each engine and where it is."""
    return HTML(_html_table(("engine", "where"), rows))


NO_LIMIT_MICROS = 10**15  # a budget this large is "no limit" ($1 billion)


def budget_line(state: BudgetState) -> str:
    """``notebook budget $0.50 — spent $0.12, reserved $0.00 (24%)``."""
    scope = state.scope
    name = f"team {scope.key}" if scope.kind == "team" else scope.kind
    spent, reserved = format_usd(state.spent_micros), format_usd(state.reserved_micros)
    if state.limit_micros >= NO_LIMIT_MICROS:
        return f"{name} budget: no limit — spent {spent}, reserved {reserved}"
    used = 100 * (state.spent_micros + state.reserved_micros) / max(1, state.limit_micros)
    period = f" per {state.period}" if state.period != "none" else ""
    return (
        f"{name} budget {format_usd(state.limit_micros)}{period} — spent {spent}, "
        f"reserved {reserved} ({used:.0f}%)"
    )


def budget_states(states: Sequence[BudgetState]) -> HTML:
    return HTML("<br>".join(html.escape(budget_line(s)) for s in states))


def report_frame(rows: Sequence[StepCostRow]) -> pd.DataFrame:
    """One row per step: calls, tokens by kind, cost, cache savings, duration."""
    import pandas as pd

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
            "LLM cost $": float(micros_to_usd(r.llm_cost_micros)),
            "compute cost $": float(micros_to_usd(r.compute_cost_micros)),
            "cost $": float(micros_to_usd(r.cost_micros)),
            "saved $": float(micros_to_usd(r.saved_micros)),
            "duration s": (r.duration_ms or 0) / 1000,
        }
        for r in rows
    ]
    return pd.DataFrame.from_records(records).set_index("step") if records else pd.DataFrame()


def cost_chart(frame: pd.DataFrame) -> None:
    """A bar chart of cost per step (and cache savings), shown in the cell."""
    if frame.empty:
        return
    import io

    from IPython.display import Image, display
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(4.0, 0.5 * len(frame) + 2), 3))
    axes = figure.subplots()
    labels = [f"{i} {n}"[:24] for i, n in zip(frame.index, frame["name"], strict=True)]
    axes.bar(labels, frame["cost $"], label="cost $")
    axes.bar(labels, frame["saved $"], bottom=frame["cost $"], label="saved by cache $", alpha=0.5)
    axes.set_ylabel("USD")
    axes.set_title("cost per step")
    axes.tick_params(axis="x", labelrotation=45)
    axes.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    display(Image(data=png.getvalue(), format="png"))


def _meter_html(states: Sequence[BudgetState]) -> str:
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
        rows.append(f"<div style='margin:2px 0'>{html.escape(budget_line(state))}{bar}</div>")
    return "".join(rows)


def meter(session: WfloSession) -> Any:
    """A live budget widget: it updates from Postgres NOTIFY whenever money moves (from
    this kernel or any other sharing a team budget)."""
    import threading

    import ipywidgets

    widget = ipywidgets.HTML(value=_meter_html(session.budget_states()))

    def follow() -> None:
        while not session.closed:
            try:
                for _state in session.watch_notebook_budget(timeout_s=5.0):
                    widget.value = _meter_html(session.budget_states())
                    if session.closed:
                        return
                widget.value = _meter_html(session.budget_states())  # team budgets too
            except Exception:
                if session.closed:
                    return
                threading.Event().wait(2.0)

    threading.Thread(target=follow, name="wflo-meter", daemon=True).start()
    return widget


def cache_stats(report: CacheReport) -> HTML:
    """``%wflo cache stats``: hits, misses, dollars saved, live entries (all kernels), and
    this kernel's hits answered by its near cache, without a Redis read."""
    stats = report.stats
    total = stats.hits + stats.misses
    rate = f"{100 * stats.hits / total:.0f}%" if total else "-"
    state = "" if report.available else " (Redis is unreachable: calls go straight to the provider)"
    rows: list[tuple[str, object]] = [
        ("hits", stats.hits),
        ("misses", stats.misses),
        ("hit rate", rate),
        ("saved", format_usd(stats.saved_micros)),
        ("entries", stats.entries),
    ]
    if report.from_memory is not None:
        rows.append(("this kernel's hits answered from memory", report.from_memory))
    return HTML(_html_table(("LLM cache" + state, ""), rows))
