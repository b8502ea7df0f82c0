"""``wflo events tail``: the event stream on Kafka, live, as readable lines on a terminal
or as JSON lines (one envelope each) when piped."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from wflo_jupyter.cli.common import console, err, progress, settings_or_exit
from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.money import format_usd

if TYPE_CHECKING:
    from wflo_jupyter.events.consumer import ConsumedEvent

events_app = typer.Typer(help="The event stream on Kafka.", no_args_is_help=True)

_ID_FIELDS = ("session_id", "step_id")  # shown in their own column, not as details


def kafka_bootstrap_or_exit() -> str:
    """``WFLO_KAFKA_BOOTSTRAP``, else the local stack's broker when it runs; else one line
    and exit 2 (reading events never starts a broker: it would have none)."""
    settings = settings_or_exit()
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    from wflo_jupyter.stack.local import LocalStack

    running = LocalStack(settings.home).engines()
    if "kafka" in running:
        return running["kafka"].url
    err.print(
        "[red]error:[/red] no Kafka: set WFLO_KAFKA_BOOTSTRAP, or start the local broker "
        "with `wflo up --with-kafka`"
    )
    raise typer.Exit(2)


def _detail(key: str, value: Any) -> str:
    if key.endswith("_micros") and isinstance(value, int):
        return f"{key.removesuffix('_micros')}={format_usd(value)}"
    return f"{key}={value}"


def event_line(item: ConsumedEvent) -> Text:
    """One event for a terminal: time, topic, type, session, step, scalar payload fields."""
    event = item.event
    step = item.envelope.get("step") or event.payload.get("step_id") or ""
    details = " ".join(
        _detail(k, v)
        for k, v in sorted(event.payload.items())
        if k not in _ID_FIELDS and isinstance(v, str | int | float | bool) and v is not None
    )
    line = Text()
    line.append(event.occurred_at.strftime("%H:%M:%S.%f")[:12], style="dim")
    line.append(f"  {item.topic:<13}", style="cyan")
    line.append(f" {event.type:<18}", style="bold")
    line.append(f" session {str(item.session or '-')[:8]:<8}")
    line.append(f" step {str(step)[:8] or '-':<8}")
    line.append(f"  {details[:200]}")
    return line


def _matches(item: ConsumedEvent, session: str | None, types: list[str]) -> bool:
    if session is not None and not item.in_session(session):
        return False
    return not types or any(fnmatchcase(item.type, pattern) for pattern in types)


def _quiet_broken_pipe() -> None:
    """The reader of our output left (``| head``): stop writing, without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):  # either may be the closed pipe (2>&1 | head)
        os.dup2(devnull, stream.fileno())


@events_app.command("tail")
def events_tail(
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="Topics (default: every wflo topic).")
    ] = None,
    session: Annotated[str | None, typer.Option(help="Only this session's events.")] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only these event types (a glob: 'step.*')."),
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning", help="Start at the oldest retained event (a new group)."),
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            help="Consumer group: share the work and resume where it stopped (default: a "
            "private group that commits nothing)."
        ),
    ] = None,
    count: Annotated[int, typer.Option("-n", help="Stop after N events (0: follow).")] = 0,
    idle: Annotated[
        float, typer.Option(help="Stop after this many seconds without an event (0: never).")
    ] = 0,
) -> None:
    """Print events from Kafka as they arrive: a line each on a terminal, JSON lines (the
    envelope as published) when piped. Invalid messages are reported on stderr."""
    from wflo_jupyter.events.consumer import EventConsumer, InvalidMessage

    if count < 0 or idle < 0:
        err.print("[red]error:[/red] -n and --idle must not be negative")
        raise typer.Exit(2)
    bootstrap = kafka_bootstrap_or_exit()
    overrides = {} if group is not None else {"enable_auto_commit": False}
    try:
        consumer = EventConsumer(
            bootstrap,
            group if group is not None else f"wflo-tail-{uuid.uuid4().hex[:8]}",
            topic or None,
            from_beginning=from_beginning,
            **overrides,
        )
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    piped = not sys.stdout.isatty()
    shown = 0
    try:
        missing = consumer.check(timeout_s=5)
        progress(f"tailing {', '.join(consumer.topics)} at {bootstrap} (Ctrl-C stops)")
        if missing:
            progress(f"not created yet (read once they are): {', '.join(missing)}")
        for item in consumer.read(idle_s=idle or None):
            if isinstance(item, InvalidMessage):
                err.print(f"[yellow]invalid message[/yellow] {item.line()}", highlight=False)
                continue
            if not _matches(item, session, event_type or []):
                continue
            if piped:
                print(json.dumps(item.envelope, separators=(",", ":")), flush=True)
            else:
                console.print(event_line(item), highlight=False)
            shown += 1
            if count and shown >= count:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C: stop quietly
    except BrokenPipeError:
        _quiet_broken_pipe()
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut the close
        consumer.close()
