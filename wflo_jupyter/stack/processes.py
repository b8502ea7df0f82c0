"""The engine processes of one ``WFLO_HOME``, as ``/proc`` (:mod:`wflo_jupyter.procfs`)
shows them: whether a recorded pid is still the process that was started, stray engines
working in this home's data directories, stopping (signal, wait, kill, verify) and reaping
the processes this object spawned."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Collection
from pathlib import Path

from wflo_jupyter import procfs
from wflo_jupyter.stack.engines import ENGINE_ORDER, EXE, EngineInfo, data_dir
from wflo_jupyter.stack.errors import StackError

_STOP_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0


class EngineProcess(subprocess.Popen[bytes]):
    """An engine's process handle. Engines deliberately outlive their handle (``wflo up``
    exits; a kernel drops its ``LocalStack``), so dropping a live one is not a leak worth a
    ``ResourceWarning``; the standard library still reaps it later, so no zombie stays."""

    def __del__(self) -> None:
        # (At interpreter exit modules are half torn down: then do nothing.)
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            super().__del__()


class EngineProcesses:
    """The engines of ``home``: the ones this object spawned (kept so they can be reaped, no
    zombies) and any found in ``/proc``."""

    def __init__(self, home: Path, progress: Callable[[str], None]) -> None:
        self.home = home
        self._progress = progress
        self._children: dict[int, EngineProcess] = {}

    def add(self, proc: EngineProcess) -> None:
        """Keep ``proc``, just spawned, until it is reaped."""
        self._children[proc.pid] = proc

    def forget(self, pid: int) -> None:
        """Drop the handle of ``pid``, which has exited and been waited for."""
        self._children.pop(pid, None)

    def owns(self, info: EngineInfo) -> bool:
        """The recorded pid is alive and is the very process we started (not a reused pid)."""
        child = self._children.get(info.pid)
        if child is not None and child.poll() is not None:
            return False
        start = info.extra.get("proc_start")
        if start:
            return procfs.is_alive(info.pid, start)
        return procfs.is_alive(info.pid) and procfs.exe_name(info.pid) == EXE[info.name]

    def strays(self, name: str) -> list[int]:
        """Live processes of engine ``name`` working in this home's data directory.

        Every engine runs with its data directory as working directory (postgres and
        redis-server chdir there themselves), which identifies them even when stack.json
        was lost; the executable name guards against unrelated processes sitting there.
        """
        target = str(data_dir(self.home, name).resolve())
        found: list[int] = []
        for pid in procfs.all_pids():
            if pid == os.getpid():
                continue
            if (
                procfs.cwd(pid) == target
                and procfs.exe_name(pid) == EXE[name]
                and procfs.is_alive(pid)
            ):
                found.append(pid)
        return found

    def reap(self, pids: Collection[int] = ()) -> None:
        """Wait for the spawned processes that have exited (so none stays a zombie), and
        for any of ``pids`` that is this process's child and a zombie although no handle
        here knows it (spawned by another ``LocalStack`` of this process, whose dropped
        handle the standard library reaps only when it next starts a subprocess)."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]
        for pid in pids:
            found = procfs.stat(pid)
            if found is not None and found.state == "Z" and found.ppid == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def stop(self, infos: Collection[EngineInfo], strays: Collection[str] = ()) -> set[str]:
        """Stop ``infos`` (and any stray process of the ``strays`` engines); verify via /proc."""
        targets: dict[int, str] = {}
        for info in infos:
            if self.owns(info):
                targets[info.pid] = info.name
        for name in set(strays) | {i.name for i in infos}:
            for pid in self.strays(name):
                targets.setdefault(pid, name)
        if not targets:
            self.reap()
            return set()
        names = sorted(set(targets.values()), key=ENGINE_ORDER.index)
        self._progress(f"stopping {', '.join(names)}...")
        # Remember each process's start time: a pid that exits and is reused by an unrelated
        # process must never be signalled. Descendants are found by parent pid, zombies
        # included (postgres children run in their own sessions, out of the process group).
        family_pids = set(targets) | set(procfs.descendants(list(targets)))
        starts = {p: procfs.start_ticks(p) for p in family_pids}
        family = {p for p, start in starts.items() if start}
        for pid, name in targets.items():
            # postgres: SIGINT is "fast shutdown" (SIGTERM would wait for clients to leave).
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

        def alive() -> list[int]:
            self.reap(family)
            return [p for p in family if procfs.is_alive(p, starts.get(p))]

        deadline = time.monotonic() + _STOP_TIMEOUT
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = alive()
        if remaining:
            # (remaining is part of family, so a root below another root adds nothing.)
            for pid in set(procfs.descendants(remaining)) - family:
                start = procfs.start_ticks(pid)
                if start:
                    starts[pid] = start
                    family.add(pid)
            self._progress(f"killing pids {sorted(remaining)} that ignored the stop signal")
            for pid in targets:
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
            for pid in alive():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + _KILL_TIMEOUT
            while alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        left = alive() + [p for n in names for p in self.strays(n) if p not in family]
        if left:
            raise StackError(f"could not stop pids {sorted(set(left))} ({', '.join(names)})")
        # A child that exited after alive()'s last reap and before its /proc check is a
        # zombie now (counted as gone): reap it too, so down() leaves no entry in /proc.
        self.reap(family)
        for info in infos:
            tmp_socket_dir = info.extra.get("socket_dir_tmp")
            if tmp_socket_dir:
                shutil.rmtree(tmp_socket_dir, ignore_errors=True)
        return set(names)
