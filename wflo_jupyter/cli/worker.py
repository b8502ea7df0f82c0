"""``wflo worker --task-queue NAME``: a standalone step worker (``WorkerHost``) in the
foreground, for steps that notebooks send to ``NAME`` (``%%wflo --queue NAME``)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from wflo_jupyter.cli.common import err, exit_now, progress, settings_or_exit
from wflo_jupyter.core.errors import SpecError, WfloError
from wflo_jupyter.core.steps import QUEUE_NAME


def worker(
    task_queue: Annotated[str, typer.Option("--task-queue", "-q", help="The task queue to serve.")],
    graceful: Annotated[
        float,
        typer.Option(help="Seconds running steps may go on after SIGTERM before cancelled."),
    ] = 30.0,
) -> None:
    """Run notebooks' steps on this machine: its sandboxes, its provider keys, the shared
    ledger, cache and events. A session's steps stay on the worker that holds its sandbox.
    SIGTERM or Ctrl-C: stop taking steps, let running ones finish (--graceful), exit 0.
    Logs go to WFLO_HOME/logs/worker.log."""
    from wflo_jupyter.session import route_to_kernel_log
    from wflo_jupyter.session.worker_host import WorkerHost

    if not QUEUE_NAME.fullmatch(task_queue):
        err.print(
            f"[red]error:[/red] --task-queue: {task_queue!r} is not a task queue name "
            "(letters, digits, '.', '_', '-', at most 100)"
        )
        raise typer.Exit(2)
    settings = settings_or_exit()
    log_path = route_to_kernel_log(settings.home, "worker.log")
    progress(f"log: {log_path}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    host = WorkerHost(settings, task_queue, progress=progress, graceful_s=graceful)
    try:
        host.run(stop)
    except (WfloError, SpecError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        exit_now(2)
    progress("wflo worker stopped")
    exit_now(0)  # temporalio's core can crash at interpreter exit (sdk-python#300)
