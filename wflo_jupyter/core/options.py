"""``OptionParser``: argparse for the magics' option lines, raising ``SpecError``.

argparse prints usage and exits on bad input; here every bad input is one ``SpecError``
line naming the magic (``%%wflo: ...``, ``%wflo budget: ...``). ``parse`` also refuses a
value argparse silently drops: on Python 3.11 ``--name=--`` parses to ``[]``.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from wflo_jupyter.core.errors import SpecError


class OptionParser(argparse.ArgumentParser):
    """argparse that raises ``SpecError`` (prefixed with ``prog``) instead of exiting."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog=prog, add_help=False, allow_abbrev=False)

    def error(self, message: str) -> NoReturn:
        raise SpecError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise SpecError(f"{self.prog}: {(message or 'invalid options').strip()}")

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """``parse_args``; an option given no value (``--name=--``) is an error."""
        args = self.parse_args(argv)
        for action in self._actions:
            if action.nargs is None and isinstance(getattr(args, action.dest, None), list):
                self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return args
