"""Parsing of the ``%wflo <command> ...`` line magic into a ``LineCommand``.

Pure and stdlib-only; each bad input is a ``SpecError`` of one line.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Any, NoReturn

from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.money import usd_to_micros


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SpecError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise SpecError(f"{self.prog}: {(message or 'invalid arguments').strip()}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _parsers() -> dict[str, _Parser]:
    parsers: dict[str, _Parser] = {}

    def add(name: str) -> _Parser:
        parser = _Parser(prog=f"%wflo {name}", add_help=False, allow_abbrev=False)
        parsers[name] = parser
        return parser

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
    """Parse ``status``, ``runs [-n N]``, ``events [-n N] [--all]``, ``restart``,
    ``budget [USD] [--team NAME [--period day|month]]``, ``team NAME``, ``report [--all]``,
    ``meter``, ``cache stats|clear [--model M | --notebook]``."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise SpecError(f"%wflo: cannot parse: {exc}") from None
    if not words:
        raise SpecError(f"%wflo: say which command: {', '.join(COMMANDS)}")
    parsers = _parsers()
    name, rest = words[0], words[1:]
    if name not in parsers:
        raise SpecError(f"%wflo: unknown command {name!r}; use one of: {', '.join(COMMANDS)}")
    options = vars(parsers[name].parse_args(rest))
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
