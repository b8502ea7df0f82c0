"""Agents that run as host processes (bubblewrap's ``bwrap``, the ``unisolated`` agent):
``ProcessAgent`` is their ``AgentHandle``; ``Spawner`` starts them from one long-lived
thread; ``LogTail`` keeps the last bytes they wrote, for start-up failures.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from wflo_jupyter.sandbox.backend import AgentHandle
from wflo_jupyter.sandbox.types import SandboxLimits

if TYPE_CHECKING:
    from wflo_jupyter.sandbox.bwrap.cgroups import Cgroup

LOG_TAIL_BYTES = 8192


class Spawner:
    """Starts sandboxes from ONE long-lived thread. ``--die-with-parent`` is
    ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked bwrap ends: a sandbox
    started from a short-lived thread (the kernel's pre-warm thread) would die with it.
    Every process gets ``env`` as its whole environment, ``/`` as its working directory,
    a new session, and one pipe for its stdout and stderr."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[
            tuple[list[str], tuple[int, ...], list[object], threading.Event]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="wflo-sandbox-spawner", daemon=True
                )
                self._thread.start()
        outcome: list[object] = []
        done = threading.Event()
        self._requests.put((argv, pass_fds, outcome, done))
        done.wait()
        (value,) = outcome
        if isinstance(value, BaseException):
            raise value
        assert isinstance(value, subprocess.Popen)
        return value

    def _serve(self) -> None:
        while True:
            argv, pass_fds, outcome, done = self._requests.get()
            try:
                outcome.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        pass_fds=pass_fds,
                        cwd="/",
                        env=self._env,
                        start_new_session=True,
                    )
                )
            except BaseException as exc:
                outcome.append(exc)
            done.set()


class LogTail:
    """Drains a process's stdout+stderr in a thread, keeping only the last bytes."""

    def __init__(self, stream: IO[bytes] | None, limit: int = LOG_TAIL_BYTES) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()
        self._stream = stream
        if stream is not None:
            threading.Thread(target=self._drain, name="wflo-sandbox-log", daemon=True).start()

    def _drain(self) -> None:
        """Reads until EOF (every sandbox process has exited), then closes the pipe. Only
        this thread closes it: closed elsewhere, its fd number could be reused by another
        file while this thread still reads it."""
        assert self._stream is not None
        fd = self._stream.fileno()
        try:
            self._read_all(fd)
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()

    def _read_all(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)
                self._size += len(data)
                while self._size - len(self._chunks[0]) >= self._limit:
                    self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", "replace")


def exit_code(returncode: int | None) -> int | None:
    """A ``Popen.returncode`` as a shell would say it (killed by signal N: 128+N)."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


class ProcessAgent(AgentHandle):
    """An agent started as a host process (bwrap, or the plain ``unisolated`` agent)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        id_prefix: str,
        cleanup: Iterable[Path] = (),
        cgroup: Cgroup | None = None,
        notice: str | None = None,
        kill_group: bool = False,
    ) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.notice = notice
        self._id = f"{id_prefix}-{proc.pid}"
        self._cleanup = list(cleanup)
        self._kill_group = kill_group
        self._log = LogTail(proc.stdout)
        self._destroyed = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def poll(self) -> int | None:
        return exit_code(self.proc.poll())

    def known_dead(self) -> bool:
        return self.proc.poll() is not None

    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        code: int | None
        try:
            code = exit_code(self.proc.wait(timeout=max(0.0, timeout_s)))
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        oom = self.cgroup is not None and self.cgroup.oom_kills() > 0
        return code, oom

    def kill(self) -> None:
        if self._kill_group:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        elif self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.cgroup is not None:
            self.cgroup.remove()
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def apply_limits(self, limits: SandboxLimits) -> str | None:
        return None

    def logs_tail(self) -> str:
        return self._log.text()


__all__ = ["LOG_TAIL_BYTES", "LogTail", "ProcessAgent", "Spawner", "exit_code"]
