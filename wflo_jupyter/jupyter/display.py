"""How results show in the notebook: streams, notices, the one-line failure, tables.

Every rich output reads right in every front end: a table is a ``Table`` (HTML for a
browser, aligned columns as ``text/plain`` for a terminal or a plain-text front end), and
no HTML can be typeset as TeX by a front end's MathJax (``$`` is written ``&#36;`` and
the container is marked ``tex2jax_ignore mathjax_ignore``). wflo's own notices are quiet
display lines, not stderr: stderr stays the cell's own and its errors.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core.error import StdinNotImplementedError
from IPython.display import publish_display_data

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.core.doctor import DoctorReport
from wflo_jupyter.core.money import format_usd
from wflo_jupyter.core.reports import CacheReport, OutputEvent, StepSummary
from wflo_jupyter.core.steps import StepResult, workflow_link

if TYPE_CHECKING:
    from IPython.lib.pretty import PrettyPrinter

MATH_IGNORE = "tex2jax_ignore mathjax_ignore"
"""Classes that keep MathJax 2 (``tex2jax_ignore``) and 3 (``mathjax_ignore``) out."""

ERROR_NOTICES = ("BudgetExceeded:", "CallNotConfirmed:", "OutputLimitExceeded:")
"""Notices that report a refused call (over a budget, not confirmed, ``max_tokens`` above
the model's output limit): the cell's error, so they stay on stderr (visible even when
the cell's code catches the SDK's exception)."""


def escape_html(text: object) -> str:
    """``text`` as HTML text, with ``$`` as ``&#36;`` so no ``$...$`` pair is TeX."""
    return html.escape(str(text)).replace("$", "&#36;")


def html_block(inner: str, css_class: str = "wflo-output", style: str = "") -> str:
    """``inner`` in a ``<div>`` MathJax leaves alone."""
    styled = f' style="{style}"' if style else ""
    return f'<div class="{css_class} {MATH_IGNORE}"{styled}>{inner}</div>'


NOTICE_STYLE = (
    "color:var(--jp-ui-font-color2,#757575);font-size:var(--jp-content-font-size0,0.85em);"
    "font-family:var(--jp-code-font-family,monospace);margin:1px 0"
)


def notice_bundle(text: str) -> dict[str, str]:
    """The mime bundle of one notice: ``[wflo] text`` as plain text and a muted line."""
    line = f"[wflo] {text}"
    return {
        "text/plain": line,
        "text/html": html_block(escape_html(line), "wflo-notice", NOTICE_STYLE),
    }


def notice(text: str) -> None:
    """Show one of wflo's notices in the running cell as a quiet line (display data)."""
    sys.stdout.flush()  # after what the cell printed so far
    sys.stderr.flush()
    publish_display_data(notice_bundle(text))


def show_event(event: OutputEvent) -> None:
    """Render one live output event of the sandbox in the running cell."""
    kind, first, second = event
    if kind == "stream":
        stream = sys.stderr if first == "stderr" else sys.stdout
        stream.write(second)
        stream.flush()
    elif kind == "display":
        publish_display_data(first, second or {})
    elif kind == "notice" and str(first).startswith(ERROR_NOTICES):
        sys.stdout.flush()
        sys.stderr.write(f"[wflo] {first}\n")
        sys.stderr.flush()
    elif kind == "notice":
        notice(str(first))


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


_NUMBER = re.compile(r"^-$|^[-+]?\$?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?: ?(?:%|s|ms))?$")


class TextOutput:
    """An output whose plain-text form is ``text()``: IPython's ``text/plain`` (the pretty
    printer) and ``repr`` both show it."""

    def text(self) -> str:
        raise NotImplementedError

    def _repr_pretty_(self, printer: PrettyPrinter, cycle: bool) -> None:
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()


@dataclass(frozen=True, repr=False)
class Table(TextOutput):
    """A small table that reads right in every front end: ``_repr_html_`` for a browser,
    and the same rows as aligned plain-text columns (``repr``) everywhere else."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str = ""
    empty: str = "(none)"
    footer: str = ""
    links: tuple[tuple[str, ...], ...] = ()  # per row and column: a URL, or "" (HTML only)

    @classmethod
    def of(
        cls,
        headers: Sequence[str],
        rows: Iterable[Sequence[object]],
        title: str = "",
        empty: str = "(none)",
        footer: str = "",
        links: Iterable[Sequence[str | None]] = (),
    ) -> Table:
        """A table of any cell values (``None`` shows as empty)."""
        cells = tuple(tuple("" if c is None else str(c) for c in row) for row in rows)
        urls = tuple(tuple(u or "" for u in row) for row in links)
        return cls(tuple(headers), cells, title, empty, footer, urls)

    def _link(self, row: int, column: int) -> str:
        if row < len(self.links) and column < len(self.links[row]):
            return self.links[row][column]
        return ""

    def _right_aligned(self) -> list[bool]:
        """Columns of numbers, amounts and durations align right."""
        return [
            any(row[i] for row in self.rows)
            and all(_NUMBER.match(row[i]) for row in self.rows if row[i])
            for i in range(len(self.headers))
        ]

    def text(self) -> str:
        """Aligned columns, two spaces apart, a rule under the headers."""
        right = self._right_aligned()
        shown = [h for h in self.headers if h]
        widths = [
            max([len(h), *(len(row[i]) for row in self.rows)]) for i, h in enumerate(self.headers)
        ]

        def line(cells: Sequence[str]) -> str:
            parts = (
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            return "  ".join(parts).rstrip()

        lines = [self.title] if self.title else []
        if shown:
            lines += [line(self.headers), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in self.rows] or [self.empty]
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        right = self._right_aligned()

        def cell(tag: str, text: str, i: int, url: str = "") -> str:
            align = "right" if right[i] else "left"
            shown = escape_html(text)
            if url:
                href = escape_html(url)
                shown = f'<a href="{href}" target="_blank" rel="noopener">{shown}</a>'
            return f'<{tag} style="text-align:{align}">{shown}</{tag}>'

        caption = f"<caption>{escape_html(self.title)}</caption>" if self.title else ""
        head = (
            "<thead><tr>"
            + "".join(cell("th", h, i) for i, h in enumerate(self.headers))
            + "</tr></thead>"
            if any(self.headers)
            else ""
        )
        body = "".join(
            "<tr>"
            + "".join(cell("td", c, i, self._link(r, i)) for i, c in enumerate(row))
            + "</tr>"
            for r, row in enumerate(self.rows)
        )
        if not self.rows:
            body = f'<tr><td colspan="{len(self.headers)}">{escape_html(self.empty)}</td></tr>'
        footer = f"<p>{escape_html(self.footer)}</p>" if self.footer else ""
        return html_block(
            f'<table class="wflo-table">{caption}{head}<tbody>{body}</tbody></table>{footer}'
        )


@dataclass(frozen=True, repr=False)
class Lines(TextOutput):
    """A few lines of text (``%wflo budget``): plain text, and HTML MathJax leaves alone."""

    lines: tuple[str, ...]

    def text(self) -> str:
        return "\n".join(self.lines)

    def _repr_html_(self) -> str:
        return html_block("<br>".join(escape_html(line) for line in self.lines))


def steps_table(
    steps: Sequence[StepSummary], temporal_ui: str | None = None, namespace: str = "default"
) -> Table:
    """``%wflo runs``: each step's workflow id links to its page in the Temporal UI (HTML);
    the text form names the UI's address once, under the table."""
    links = [
        ("",) * 6 + (workflow_link(temporal_ui, namespace, s.workflow_id) or "",) for s in steps
    ]
    footer = f"workflows in the Temporal UI: {temporal_ui}" if temporal_ui and steps else ""
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
    headers = ("#", "name", "status", "exit", "duration", "cost", "workflow")
    return Table.of(headers, rows, empty="no steps in this session yet", footer=footer, links=links)


EVENT_DETAILS = frozenset(
    [
        "name",
        "status",
        "exit_reason",
        "cost_micros",
        "seq",
        "op",
        "reason",
        "scope",
        "removed",
        "team",
        "model",
    ]
)
"""The payload fields ``%wflo events`` shows (steps, budget ops, sandboxes, cache, teams)."""


def events_table(events: Sequence[dict[str, Any]], *, kafka: bool = True) -> Table:
    """``%wflo events``: the outbox's newest events; the footer says which of them are not
    on Kafka yet (or that no Kafka is configured, so they stay in the outbox)."""
    pending = sum(1 for e in events if not e.get("sent"))
    if not events:
        footer = ""
    elif not kafka:
        footer = "no Kafka configured (WFLO_KAFKA_BOOTSTRAP): events stay in the ledger's outbox"
    elif pending:
        footer = f"{pending} of these {len(events)} not on Kafka yet (the relay sends them)"
    else:
        footer = f"all {len(events)} on Kafka"
    rows = [
        (
            str(e.get("occurred_at", ""))[:23].replace("T", " "),
            e.get("type", ""),
            e.get("key", "")[:8],
            ", ".join(
                f"{k}={v}" for k, v in sorted(e.get("payload", {}).items()) if k in EVENT_DETAILS
            ),
            "yes" if e.get("sent") else "pending",
        )
        for e in events
    ]
    headers = ("time", "type", "subject", "details", "in Kafka")
    return Table.of(headers, rows, empty="no events yet", footer=footer)


def status(rows: Sequence[tuple[str, str]]) -> Table:
    """``%wflo status``: each engine and where it is."""
    return Table.of(("engine", "where"), rows)


def doctor(report: DoctorReport) -> Table:
    """``%wflo doctor``: one line per check (state, what was found, the remedy), and the
    verdict as the last line."""
    rows = [(f.check, f.state, f.found, f.remedy) for f in report.findings]
    title = f"wflo doctor ({report.version})" if report.version else "wflo doctor"
    return Table.of(("check", "state", "found", "remedy"), rows, title, footer=report.verdict())


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


def budget_states(states: Sequence[BudgetState]) -> Lines:
    return Lines(tuple(budget_line(s) for s in states))


def cache_stats(report: CacheReport) -> Table:
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
    return Table.of(("", ""), rows, title="LLM cache" + state)
