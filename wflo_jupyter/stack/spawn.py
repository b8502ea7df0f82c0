"""Spawning engines: each is started from its :class:`~wflo_jupyter.stack.plans.Plan`
detached (its own session, output to its log) so it outlives the CLI that started it, then
polled until it answers its health check, exits, or runs out of time."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from wflo_jupyter import procfs
from wflo_jupyter.stack.engines import START_TIMEOUT, EngineInfo
from wflo_jupyter.stack.errors import StackError, one_line
from wflo_jupyter.stack.health import health
from wflo_jupyter.stack.logs import open_log, since, tail
from wflo_jupyter.stack.plans import EnginePlans
from wflo_jupyter.stack.processes import EngineProcess, EngineProcesses


@dataclass
class Launch:
    """An engine process that was spawned and is waiting to become healthy."""

    info: EngineInfo
    proc: EngineProcess
    log: Path
    log_offset: int
    deadline: float
    started: float
    attempt: int


class Spawner:
    """Spawns the engines ``plans`` describes into ``processes``, logging into ``logs``."""

    def __init__(self, plans: EnginePlans, processes: EngineProcesses, logs: Path) -> None:
        self._plans = plans
        self._processes = processes
        self._logs = logs

    def spawn(self, name: str, attempt: int, previous: EngineInfo | None = None) -> Launch:
        """Start engine ``name`` (its ``attempt``-th try) without waiting for it, at the
        address of ``previous`` (its last run) when that is free."""
        started = time.monotonic()  # includes initdb on postgres' first start
        plan = self._plans.plan(name, previous)
        fh, log, offset = open_log(self._logs, name)
        extra = {**plan.extra, "log": str(log)}
        try:
            proc = EngineProcess(
                plan.argv,
                cwd=plan.cwd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlive the CLI; own process group
                close_fds=True,  # never leak the stack.lock descriptor into an engine
                **plan.popen_kwargs,
            )
        except OSError as exc:
            raise StackError(f"{name}: could not run {plan.argv[0]}: {one_line(exc)}") from exc
        finally:
            fh.close()
        self._processes.add(proc)
        info = EngineInfo(
            name=name,
            url=plan.url,
            pid=proc.pid,
            extra={**extra, "proc_start": procfs.start_ticks(proc.pid)},
        )
        return Launch(
            info=info,
            proc=proc,
            log=log,
            log_offset=offset,
            deadline=started + START_TIMEOUT[name],
            started=started,
            attempt=attempt,
        )

    def poll(self, launch: Launch) -> str | None:
        """None: still starting; "ok"; "retry"; or a one-line failure message."""
        name = launch.info.name
        code = launch.proc.poll()
        if code is not None:
            self._processes.forget(launch.proc.pid)
            if "socket_dir_tmp" in launch.info.extra:
                shutil.rmtree(launch.info.extra["socket_dir_tmp"], ignore_errors=True)
            log_tail = tail(launch.log, launch.log_offset)
            # a free port taken by someone else between choosing and binding; the line
            # saying so may be followed by a long trace (temporal panics after it)
            if launch.attempt < 5 and (
                "address already in use" in since(launch.log, launch.log_offset).lower()
            ):
                return "retry"
            return f"{name} exited with code {code} at start-up ({launch.log}): {log_tail}"
        problem = health(launch.info, timeout=2.0)
        if problem is None:
            return "ok"
        if time.monotonic() >= launch.deadline:
            self.kill(launch)
            timeout = START_TIMEOUT[name]
            return (
                f"{name} did not become healthy within {timeout:.0f} s "
                f"(last error: {problem}); log {launch.log}: {tail(launch.log, launch.log_offset)}"
            )
        return None

    def kill(self, launch: Launch) -> None:
        """Stop ``launch``'s engine (best effort)."""
        with contextlib.suppress(StackError):
            self._processes.stop([launch.info])
