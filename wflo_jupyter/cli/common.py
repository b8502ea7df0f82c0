"""What every ``wflo`` command shares: the consoles (stdout, stderr), the settings (a bad
``WFLO_*`` is one line and exit 2), progress lines, and a clean, immediate exit."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.stack.settings import Settings

# Piped output (make demo, CI logs) gets room for the report's columns.
console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


def settings_or_exit() -> Settings:
    try:
        return Settings.from_env()
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def progress(message: str) -> None:
    err.print(f"[dim]\\[wflo][/dim] {message}")


def exit_now(code: int) -> None:
    """Leave at once: a command that opened a Temporal client (temporalio's Rust core) can
    crash at the interpreter's exit (temporalio/sdk-python#300), which would turn a verdict
    into a core dump; only for commands with nothing left to clean up."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
