"""``wflo doctor``: the doctor's findings as a table (or JSON), the verdict last, and the
exit code (1 when something blocks the quickstart)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from wflo_jupyter.cli.common import console, exit_now, settings_or_exit

_LEVEL_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    timeout: Annotated[float, typer.Option(min=0.5, help="Seconds each probe may take.")] = 5.0,
) -> None:
    """What this machine has and lacks for wflo, one line each with its remedy.

    Exits 1 when something blocks the quickstart (the last line says what)."""
    import json

    from wflo_jupyter.core.version import __version__
    from wflo_jupyter.doctor import run_doctor

    report = run_doctor(settings_or_exit(), timeout_s=timeout, version=__version__)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table("check", "state", "found", "remedy", title=f"wflo doctor ({__version__})")
        for finding in report.findings:
            style = _LEVEL_STYLE[finding.level]
            table.add_row(
                finding.check,
                f"[{style}]{finding.state}[/{style}]",
                escape(finding.found),
                escape(finding.remedy),
            )
        console.print(table)
        verdict = report.verdict()
        console.print(verdict if report.ok else f"[bold red]{escape(verdict)}[/bold red]")
    exit_now(report.exit_code)
