"""Parsing of the ``%wflo <command> ...`` line magic into a ``LineCommand``, and the
help of both magics (``%wflo``, ``%wflo help``, ``%wflo?``, ``%%wflo?``).

Pure and stdlib-only; each bad input is a ``SpecError`` of one line.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Any

from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.money import usd_to_micros
from wflo_jupyter.core.options import OptionParser

MAX_ROWS = 100_000  # -n of runs / events


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    if value > MAX_ROWS:
        raise argparse.ArgumentTypeError(f"at most {MAX_ROWS}, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"must be in (0, 600] seconds, got {text}")
    return value


def _parsers() -> dict[str, OptionParser]:
    parsers: dict[str, OptionParser] = {}

    def add(name: str) -> OptionParser:
        parser = OptionParser(f"%wflo {name}")
        parsers[name] = parser
        return parser

    add("help")
    add("status")
    add("runs").add_argument("-n", type=_positive_int, default=50, dest="limit")
    events = add("events")
    events.add_argument("-n", type=_positive_int, default=20, dest="limit")
    events.add_argument("--all", action="store_true", dest="all_sessions")
    add("restart")
    budget = add("budget")
    budget.add_argument("amount", nargs="?", default=None)
    budget.add_argument("--team", default=None)
    budget.add_argument("--period", choices=("none", "day", "month"), default=None)
    add("team").add_argument("name")
    add("report").add_argument("--all", action="store_true", dest="all_sessions")
    add("meter")
    add("doctor").add_argument("--timeout", type=_positive_seconds, default=5.0)
    cache = add("cache")
    cache.add_argument("action", choices=("stats", "clear"))
    cache.add_argument("--model", default=None)
    cache.add_argument("--notebook", action="store_true")
    return parsers


COMMANDS = tuple(_parsers())


@dataclass(frozen=True)
class LineCommand:
    """One parsed ``%wflo`` line: the command and its options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_line_command(line: str) -> LineCommand:
    """Parse ``help`` (also an empty line), ``status``, ``runs [-n N]``,
    ``events [-n N] [--all]``, ``restart``, ``budget [USD] [--team NAME [--period day|month]]``,
    ``team NAME``, ``report [--all]``, ``meter``, ``doctor [--timeout S]``,
    ``cache stats|clear [--model M | --notebook]``."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise SpecError(f"%wflo: cannot parse: {exc}") from None
    if not words:
        return LineCommand("help")
    parsers = _parsers()
    name, rest = words[0], words[1:]
    if name not in parsers:
        raise SpecError(f"%wflo: unknown command {name!r}; use one of: {', '.join(COMMANDS)}")
    options = vars(parsers[name].parse(rest))
    if name == "budget":
        _check_budget(options)
    if name == "team":
        _check_team_name("%wflo team", options["name"])
    if name == "cache" and options["action"] != "clear":
        for flag in ("model", "notebook"):
            if options[flag] not in (None, False):
                raise SpecError(f"%wflo cache stats: --{flag} applies to clear only")
    if name == "cache" and options["model"] is not None and options["notebook"]:
        raise SpecError("%wflo cache clear: use --model M or --notebook, not both")
    return LineCommand(name, options)


def _check_team_name(prog: str, team: str) -> None:
    if not team.strip() or len(team) > 200 or any(c.isspace() for c in team):
        raise SpecError(f"{prog}: a team name is one word of at most 200 characters: {team!r}")


def _check_budget(options: dict[str, Any]) -> None:
    amount = options.pop("amount")
    if options["team"] is not None:
        _check_team_name("%wflo budget --team", options["team"])
    if options["period"] is not None and options["team"] is None:
        raise SpecError("%wflo budget: --period applies to a team budget (--team NAME)")
    try:
        options["limit_micros"] = usd_to_micros(amount) if amount is not None else None
    except ValueError as exc:
        raise SpecError(f"%wflo budget: {exc}") from None


CELL_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--budget USD", "this cell's budget: an LLM call that could go over it is refused"),
    ("--name NAME", "the step's name in runs, events and reports (default cell-<id>)"),
    ("--in VAR,...", "notebook variables copied into the sandbox before the cell runs"),
    ("--out VAR,...", "sandbox variables brought back after it (JSON, DataFrames, arrays)"),
    ("--timeout SECONDS", "wall-clock limit: the cell is interrupted, then its sandbox killed"),
    ("--memory SIZE", "sandbox memory limit, e.g. 512m or 2g"),
    ("--cpus N", "sandbox CPU limit, e.g. 0.5 or 2"),
    ("--image IMAGE", "the sandbox image this cell runs in"),
    ("--retries N", "retry a sandbox that would not start or a lost worker, up to N times"),
    ("--no-cache", "send every LLM call to the provider (no cached answers)"),
    ("--fresh", "run in a new, empty sandbox: no state from earlier cells"),
    ("--estimate", "a dry run: what the cell's LLM calls could cost; nothing sent or spent"),
    ("--queue NAME", "run on the `wflo worker --task-queue NAME` (another machine); state kept"),
)
"""``%%wflo`` options, one line each (a unit test checks them against the parser)."""

COMMAND_HELP: tuple[tuple[str, str], ...] = (
    ("status", "engines, sandbox image and session at a glance"),
    ("runs [-n N]", "this session's last N steps (50): status, duration, cost, workflow"),
    ("events [-n N] [--all]", "the last N events (20) of this session, or of every session"),
    ("budget [USD]", "show this notebook's budgets, or set the notebook budget to USD"),
    (
        "budget --team NAME [USD] [--period P]",
        "show, create or change a team budget; P: day|month|none",
    ),
    ("team NAME", "also charge this notebook's steps to team NAME's budget"),
    ("report [--all]", "cost per step: a DataFrame and a chart (--all: every session)"),
    ("cache stats", "LLM cache hits, misses, dollars saved, live entries"),
    (
        "cache clear [--model M | --notebook]",
        "drop cached answers: all, one model's, this notebook's",
    ),
    ("meter", "the live budget widget"),
    ("doctor [--timeout S]", "what this machine has and lacks for wflo, each with its remedy"),
    ("restart", "a new sandbox session: state from earlier cells is dropped"),
    ("help", "this list (also %wflo with no command, %wflo? and %%wflo?)"),
)
"""``%wflo`` commands, one line each (a unit test checks them against the parsers)."""


def _listing(items: tuple[tuple[str, str], ...]) -> list[str]:
    width = max(len(name) for name, _ in items)
    return [f"  {name.ljust(width)}  {text}" for name, text in items]


def magic_help() -> str:
    """Every ``%%wflo`` option and ``%wflo`` command, one line each."""
    return "\n".join(
        [
            "%%wflo [options]: run the cell as a budgeted, durable step in a sandbox",
            *_listing(CELL_OPTIONS),
            "",
            "%wflo <command>: inspect and manage this kernel's wflo session",
            *_listing(COMMAND_HELP),
            "",
            "Defaults of the cell options and more: %config WfloMagics (lists every setting),",
            "%config WfloMagics.<setting> = value (e.g. %config WfloMagics.timeout = 120).",
        ]
    )
