"""Reading processes from Linux's ``/proc``: one place for the local stack (its engines'
processes), the sandboxes (bubblewrap's agent, reaping) and orphan detection (a kernel pid
that was reused).

Stdlib only; every reader returns a neutral value (None, ``""``, ``[]``) where ``/proc``
or the process is missing, never raises for that.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this package uses."""

    state: str
    """R, S, D, Z (zombie), X (dead), ..."""
    ppid: int
    pgrp: int
    start_ticks: str
    """Start time after boot in clock ticks (as text: compared, never computed with)."""

    @property
    def running(self) -> bool:
        """Neither a zombie nor dead."""
        return self.state not in ("Z", "X", "x")


def stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    try:
        return ProcStat(fields[0], int(fields[1]), int(fields[2]), fields[19])
    except ValueError:
        return None


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks after boot (``""`` when it is gone): with
    the pid, it names one process even after the pid is reused."""
    found = stat(pid)
    return found.start_ticks if found else ""


def is_alive(pid: int, start: str | None = None) -> bool:
    """``pid`` exists, is not a zombie and (when given) started at ``start`` ticks."""
    if pid <= 0:
        return False
    found = stat(pid)
    if found is None or not found.running:
        return False
    return not start or found.start_ticks == start


def started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (None when unknown)."""
    found = stat(pid)
    if found is None:
        return None
    try:
        boot = next(
            int(line.split()[1])
            for line in (PROC / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + int(found.start_ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def all_pids() -> list[int]:
    """Every pid in ``/proc``."""
    try:
        return [int(name) for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []


def children_by_parent() -> dict[int, list[int]]:
    """ppid -> the pids of its children, for every process now in ``/proc``."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        found = stat(pid)
        if found is not None:
            children.setdefault(found.ppid, []).append(pid)
    return children


def descendants(roots: Collection[int]) -> list[int]:
    """Every process below ``roots`` (not the roots), breadth first."""
    children = children_by_parent()
    found: list[int] = []
    seen: set[int] = set(roots)
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> list[bytes]:
    """The process's argv (``[]`` when it is gone or a zombie)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.rstrip(b"\0").split(b"\0") if raw else []


def exe_name(pid: int) -> str:
    """The basename of the process's executable (``""`` when unknown)."""
    try:
        return os.path.basename(os.readlink(PROC / str(pid) / "exe")).removesuffix(" (deleted)")
    except OSError:
        return ""


def cwd(pid: int) -> str:
    """The process's working directory (``""`` when unknown)."""
    try:
        return os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return ""


__all__ = [
    "ProcStat",
    "all_pids",
    "children_by_parent",
    "cmdline",
    "cwd",
    "descendants",
    "exe_name",
    "is_alive",
    "start_ticks",
    "started_at",
    "stat",
]
