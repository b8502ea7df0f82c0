"""The local stack's error: :class:`StackError`, and the one-line form of any exception its
messages quote."""

from __future__ import annotations


class StackError(RuntimeError):
    """The local stack could not be started, checked or stopped (one-line message)."""


def one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: first line of its message``."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
