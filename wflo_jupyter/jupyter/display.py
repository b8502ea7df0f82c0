"""How results show in the notebook: streams, the one-line failure, tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from IPython.display import HTML, publish_display_data

from wflo_jupyter.core.money import format_usd
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.ledger.models import StepRow
from wflo_jupyter.orchestration.stepio import OutputEvent
from wflo_jupyter.session import WfloSession


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


def steps_table(steps: Sequence[StepRow]) -> HTML:
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


def status(session: WfloSession) -> HTML:
    session.start()
    endpoints = session.endpoints
    assert endpoints is not None
    rows = [
        ("postgres", endpoints.database_url.split("@")[-1]),
        ("temporal", endpoints.temporal_address),
        ("redis", endpoints.redis_url or "not configured"),
        ("kafka", endpoints.kafka_bootstrap or "not configured (events stay in the outbox)"),
        ("docker", endpoints.docker_host or "local engine"),
        ("image", endpoints.runtime_image),
        ("session", session.session_id),
    ]
    return HTML(_html_table(("engine", "where"), rows))
