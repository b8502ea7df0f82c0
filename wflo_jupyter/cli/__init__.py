"""The ``wflo`` command line: local stack, doctor, runtime image, migrations, demo and
examples, report, relay, events, worker."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wflo_jupyter.cli.common import console, err, progress, settings_or_exit
from wflo_jupyter.cli.doctor import doctor
from wflo_jupyter.cli.events import events_app
from wflo_jupyter.cli.examples import examples, packaged_quickstart, print_outputs, run_notebook
from wflo_jupyter.cli.image import image_app
from wflo_jupyter.cli.worker import worker
from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.money import format_usd
from wflo_jupyter.core.reports import StepCostRow
from wflo_jupyter.stack.settings import ENGINES, VARIABLE_BY_ENGINE, resolve_endpoints

app = typer.Typer(add_completion=False, no_args_is_help=True, help="wflo-jupyter command line.")


def _show_version(value: bool) -> None:
    if value:
        from wflo_jupyter.core.version import __version__

        console.print(f"wflo-jupyter {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_show_version
        ),
    ] = False,
) -> None:
    """wflo-jupyter command line."""


def _status_markup(status: str) -> str:
    """A step's status for ``wflo report``: failed red, cancelled yellow."""
    colour = {"completed": "", "cancelled": "yellow"}.get(status, "red")
    return f"[{colour}]{status}[/{colour}]" if colour else status


@app.command()
def up(
    with_kafka: Annotated[
        bool, typer.Option("--with-kafka", help="Also start a Kafka broker.")
    ] = False,
) -> None:
    """Start the local stack (Postgres, Redis, Temporal; Kafka with --with-kafka)."""
    from wflo_jupyter.stack.local import LocalStack, StackError

    settings = settings_or_exit()
    try:
        engines = LocalStack(settings.home, progress=progress).up(with_kafka=with_kafka)
    except StackError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    table = Table("engine", "url", "pid", title=f"local stack in {settings.home}")
    for name, info in engines.items():
        extra = " ".join(f"{k}={v}" for k, v in info.extra.items() if k == "ui")
        table.add_row(name, f"{info.url} {extra}".strip(), str(info.pid))
    console.print(table)


@app.command()
def down() -> None:
    """Stop every engine of the local stack."""
    from wflo_jupyter.stack.local import LocalStack

    stopped = LocalStack(settings_or_exit().home, progress=progress).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Each engine, where it is, its pid, and whether it answers."""
    from wflo_jupyter.stack.local import LocalStack

    settings = settings_or_exit()
    table = Table("engine", "url", "pid", "healthy", "source")
    local = {info.name: (info, ok) for info, ok in LocalStack(settings.home).status()}
    for engine in ENGINES:
        configured = settings.configured(engine)
        if configured:
            table.add_row(engine, configured, "-", "?", VARIABLE_BY_ENGINE[engine])
        elif engine in local:
            info, ok = local[engine]
            table.add_row(
                engine, info.url, str(info.pid), "yes" if ok else "[red]no[/red]", "local stack"
            )
        else:
            table.add_row(engine, "-", "-", "[yellow]not running[/yellow]", "local stack")
    console.print(table)


app.command()(doctor)
app.command()(worker)


@app.command()
def migrate() -> None:
    """Create the ledger database if needed and apply every migration."""
    from wflo_jupyter.ledger.store import Ledger

    try:
        endpoints = resolve_endpoints(settings_or_exit(), progress=progress)
        ledger = Ledger.connect(endpoints.database_url)
        console.print(f"ledger at revision {ledger.current_revision()}")
        ledger.close()
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _cost_rows(session_ids: list[str] | None) -> list[StepCostRow]:
    from wflo_jupyter.ledger.reports import step_costs
    from wflo_jupyter.ledger.store import Ledger

    endpoints = resolve_endpoints(settings_or_exit(), progress=progress)
    ledger = Ledger.connect(endpoints.database_url)
    try:
        return step_costs(ledger.engine, session_ids=session_ids)
    finally:
        ledger.close()


def _steps_table(rows: list[StepCostRow]) -> Table:
    from wflo_jupyter.ledger.reports import totals

    table = Table(
        "#",
        "name",
        "status",
        "duration",
        "calls",
        "cached",
        "in tok",
        "out tok",
        "cost",
        "saved",
        title="steps",
    )
    for row in rows:
        simulated = " (simulated)" if row.simulated_calls else ""
        table.add_row(
            str(row.seq),
            row.name,
            _status_markup(row.status),
            f"{(row.duration_ms or 0) / 1000:.2f} s",
            f"{row.calls}{simulated}",
            str(row.cached_calls),
            str(row.input_tokens + row.cache_read_tokens + row.cache_write_tokens),
            str(row.output_tokens),
            format_usd(row.cost_micros),
            format_usd(row.saved_micros),
        )
    total = totals(rows)
    table.add_section()
    table.add_row(
        "",
        f"{len(rows)} steps",
        "",
        "",
        str(total["calls"]),
        str(total["cached_calls"]),
        str(total["input_tokens"] + total["cache_read_tokens"] + total["cache_write_tokens"]),
        str(total["output_tokens"]),
        format_usd(total["cost_micros"]),
        format_usd(total["saved_micros"]),
    )
    return table


@app.command()
def report(
    session: Annotated[list[str] | None, typer.Option(help="Only these session ids.")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write CSV here.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Cost and outcome of each recorded step (tokens, cost, cache savings)."""
    import csv
    import json

    from wflo_jupyter.ledger.reports import as_dict

    try:
        rows = _cost_rows(session)
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(_steps_table(rows))
    records = [as_dict(row) for row in rows]
    if csv_file is not None:
        with csv_file.open("w", newline="") as handle:
            fields = list(records[0]) if records else ["step_id"]
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
        console.print(f"wrote {len(records)} rows to {csv_file}")
    if json_file is not None:
        json_file.write_text(json.dumps(records, indent=2))
        console.print(f"wrote {len(records)} rows to {json_file}")


@app.command()
def demo(
    notebook: Annotated[
        Path | None,
        typer.Argument(help="Notebook to run (default: the packaged quickstart)."),
    ] = None,
    timeout: Annotated[int, typer.Option(help="Per-cell timeout in seconds.")] = 600,
) -> None:
    """Run a notebook headless on the local stack, then print its steps and costs.

    With no NOTEBOOK, runs the quickstart that ships in the package."""
    if notebook is None:
        with packaged_quickstart() as quickstart:
            _demo(quickstart, timeout)
        return
    if not notebook.is_file():
        err.print(f"[red]error:[/red] no notebook at {notebook}")
        raise typer.Exit(2)
    _demo(notebook, timeout)


def _demo(notebook: Path, timeout: int) -> None:
    from wflo_jupyter.ledger.store import Ledger

    try:
        resolve_endpoints(settings_or_exit(), need_kafka=False, progress=progress)
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    notebook_key = str(notebook.resolve())
    since = datetime.now(UTC)
    started = time.monotonic()
    os.environ["WFLO_NOTEBOOK_PATH"] = notebook_key  # the kernel records it on its session
    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("WFLO_PROVIDER"):
        os.environ["WFLO_PROVIDER"] = "mock"
        progress("no OPENAI_API_KEY: LLM answers are simulated (WFLO_PROVIDER=mock)")
    print_outputs(run_notebook(notebook, timeout))
    progress(f"notebook done in {time.monotonic() - started:.1f} s")
    endpoints = resolve_endpoints(settings_or_exit())
    ledger = Ledger.connect(endpoints.database_url)
    try:
        sessions = ledger.sessions_of_notebook(notebook_key, since)
    finally:
        ledger.close()
    console.print(_steps_table(_cost_rows(sessions)))


app.command()(examples)


@app.command()
def relay() -> None:
    """Relay the ledger's event outbox to Kafka in the foreground (production).

    Start several: one leads (a Postgres advisory lock), the others stand by and take
    over when it ends or is stuck past WFLO_RELAY_LEASE_S. SIGTERM or Ctrl-C drains for up
    to WFLO_RELAY_DRAIN_S, then exits 0. Needs a session-level Postgres connection."""
    import logging
    import signal
    import threading

    from wflo_jupyter.events.relay import OutboxRelay, default_holder
    from wflo_jupyter.ledger.store import Ledger

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = settings_or_exit()
    endpoints = resolve_endpoints(settings, need_kafka=True, progress=progress)
    assert endpoints.kafka_bootstrap is not None
    ledger = Ledger.connect(endpoints.database_url)
    outbox = OutboxRelay.from_settings(
        ledger, endpoints.kafka_bootstrap, settings, holder=default_holder("wflo relay")
    )
    try:
        created = outbox.prepare_topics()
    except WfloError as exc:  # a misconfigured topic or no broker: one line, exit 2
        outbox.stop(drain_s=0)
        ledger.close()
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if created:
        progress(f"created topics {', '.join(created)}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    progress(f"relay {outbox.holder}: outbox -> Kafka at {endpoints.kafka_bootstrap}")
    try:
        outbox.run(stop)
    finally:
        outbox.stop()
        ledger.close()
    progress(f"relay stopped; {outbox.published} events published")


app.add_typer(image_app, name="image")

sandbox_app = typer.Typer(help="Sandbox containers.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("prune")
def sandbox_prune() -> None:
    """Remove sandbox containers whose kernel is gone (and their socket directories)."""
    from wflo_jupyter.sandbox.docker_engine import connect_docker
    from wflo_jupyter.sandbox.orphans import reap_orphans

    try:
        client = connect_docker(settings_or_exit().docker_host)
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        removed = reap_orphans(client)
    finally:
        client.close()
    console.print(f"removed {len(removed)} orphaned sandbox container(s)")
    for container_id in removed:
        console.print(f"  {container_id[:12]}")


app.add_typer(events_app, name="events")


def main() -> None:
    app()
