"""The life of one session's sandbox: started lazily (or eagerly by ``start()``), replaced
when it was lost, stopped when idle, changed in place when a cell asks for other limits,
and removed with everything it left by ``close()``.

``SandboxLifecycle`` holds what every operation on the session shares: the settings, the
lock, the running sandbox (``sandbox.channel.Box``) and the LLM workers.
``sandbox.session.SandboxSession`` adds the cells.

``on_change`` (optional) is told each change of the sandbox's life, as ``(what, details)``:
``started``, ``stopped`` (``reason`` idle, restart or close), ``killed`` (``reason`` stuck
or exited) and ``oom``. It is called under the session's lock and must not block; the
session layer turns these into events (this package knows no ledger).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import docker

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import format_size
from wflo_jupyter.sandbox.agent import AGENT_DIR
from wflo_jupyter.sandbox.backend import AgentLauncher
from wflo_jupyter.sandbox.cell_run import CellRun
from wflo_jupyter.sandbox.channel import Box
from wflo_jupyter.sandbox.docker_backend import DockerLauncher
from wflo_jupyter.sandbox.docker_engine import LABEL_PREFIX
from wflo_jupyter.sandbox.handshake import launch_sandbox
from wflo_jupyter.sandbox.llm_relay import LlmFastPath, LlmHandler, LlmRelay
from wflo_jupyter.sandbox.outcomes import death_between_cells
from wflo_jupyter.sandbox.types import DEFAULT_IMAGE, ExecResult, SandboxLimits

log = logging.getLogger(__name__)

SandboxWatcher = Callable[[str, dict[str, Any]], None]
"""Told ``(what, details)`` for each change of a sandbox's life (module docstring)."""


class SandboxLifecycle:
    """One session's sandbox over time (see the module docstring).

    ``launcher`` picks the isolation (default: a ``DockerLauncher`` on ``client``); see
    ``sandbox.isolation.open_sandbox_session`` to choose it from ``WFLO_ISOLATION``.
    """

    def __init__(
        self,
        client: docker.DockerClient | None,
        session_id: str,
        *,
        image: str = DEFAULT_IMAGE,
        limits: SandboxLimits | None = None,
        socket_base: Path | None = None,
        role: str = "session",
        ready_timeout_s: float = 30.0,
        interrupt_grace_s: float = 2.0,
        agent_dir: Path = AGENT_DIR,
        launcher: AgentLauncher | None = None,
    ) -> None:
        if launcher is None:
            if client is None:
                raise SandboxError("a SandboxSession needs a Docker client or a launcher")
            launcher = DockerLauncher(client)
        self.launcher = launcher
        self.client = client
        self.session_id = session_id
        self.image = image
        self.limits = limits or SandboxLimits()
        self.socket_base = socket_base
        self.role = role
        self.ready_timeout_s = ready_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.agent_dir = agent_dir
        self._lock = threading.RLock()
        self.llm_handler: LlmHandler | None = None
        # tried first on the reading thread (a cache hit answered without a hand-off)
        self.llm_fast_path: LlmFastPath | None = None
        self._llm = LlmRelay(self._lock)
        self._box: Box | None = None
        self._image_checked = False
        self._busy = False
        self._closing = False
        self._last_used = time.monotonic()
        self._lost_notice: str | None = None
        self._running_cell: CellRun | None = None
        self.on_change: SandboxWatcher | None = None

    # -- introspection ------------------------------------------------------------------

    @property
    def container_id(self) -> str | None:
        """The running sandbox's id (a container id, ``bwrap-<pid>``, ``host-<pid>``)."""
        box = self._box
        return box.container_id if box is not None else None

    @property
    def isolation(self) -> str:
        """``docker`` | ``bubblewrap`` | ``unisolated``."""
        return self.launcher.isolation

    @property
    def running(self) -> bool:
        return self._box is not None

    @property
    def idle_seconds(self) -> float:
        return 0.0 if self._busy else time.monotonic() - self._last_used

    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}.session": self.session_id,
            f"{LABEL_PREFIX}.kernel-pid": str(os.getpid()),
            f"{LABEL_PREFIX}.hostname": socket.gethostname(),
            f"{LABEL_PREFIX}.created": datetime.now(UTC).isoformat(timespec="seconds"),
            f"{LABEL_PREFIX}.role": self.role,
        }

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        """Start the container and wait for its agent (no-op when one is running)."""
        with self._lock:
            if self._box is None:
                self._box = self._launch()

    def restart(self) -> None:
        """Replace the container by a new one (the namespace is dropped)."""
        with self._lock:
            self._tell("stopped", self._box, reason="restart")
            self._discard()
            self._lost_notice = None
            self._box = self._launch()

    def close(self) -> None:
        """Remove the container and the socket directory. Idempotent; may be called from
        another thread while a cell runs (that cell then ends with ``killed``)."""
        self._closing = True
        try:
            box = self._box
            if box is not None:
                self._tell("stopped", box, reason="close")
                box.kill()  # unblocks a running execute, which then cleans up
            with self._lock:
                self._discard()
                self._lost_notice = None
                pool = self._llm.detach()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        finally:
            self._closing = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop_if_idle(self, idle_s: float) -> bool:
        """Stop the container if no cell ran for ``idle_s`` seconds; the next ``execute``
        starts a new one and reports ``state_lost`` with a notice. True if it stopped."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            box = self._box
            if box is None or self._busy or time.monotonic() - self._last_used < idle_s:
                return False
            self._tell("stopped", box, reason="idle")
            self._discard()
            if box.cells:
                self._lost_notice = (
                    f"the sandbox was idle for more than {idle_s:g} s and was stopped; "
                    "this cell runs in a new one, state from earlier cells was lost"
                )
            return True
        finally:
            self._lock.release()

    # -- replacing and changing the sandbox ---------------------------------------------

    def _replace_dead(self, box: Box, result: ExecResult) -> None:
        """Drop a sandbox that died while no cell ran; say so when it held state."""
        code, oom = box.wait_exit(2.0)
        self._tell_death(box, code, oom, during_cell=False)
        if box is self._box:
            self._discard()
        else:
            box.destroy()
        what = death_between_cells(code, oom, box.limits.memory_bytes)
        if box.cells:
            result.state_lost = True
            result.notices.append(
                f"{what} after the last cell; this cell runs in a new sandbox, "
                "state from earlier cells was lost"
            )

    def _apply_limits(self, box: Box, limits: SandboxLimits, result: ExecResult) -> None:
        """Change memory / CPU / pids limits of the running sandbox in place."""
        problem = box.handle.apply_limits(limits)
        if problem is not None:
            result.notices.append(
                f"could not change the running sandbox's limits ({problem}); "
                f"this cell runs with memory {format_size(box.limits.memory_bytes)}, "
                f"{box.limits.cpus:g} CPUs, {box.limits.pids_limit} pids"
            )
            return
        box.limits = replace(
            limits, workspace_size=box.limits.workspace_size, tmp_size=box.limits.tmp_size
        )

    # -- sandboxes ----------------------------------------------------------------------

    def _tell(self, what: str, box: Box | None, **details: Any) -> None:
        """``on_change(what, details)`` about ``box`` (nothing when there is no box or no
        watcher); a failing watcher is logged, never raised into the sandbox's work."""
        watcher = self.on_change
        if watcher is None or box is None:
            return
        sandbox = {"sandbox_id": box.container_id or "", "image": self.image, "role": self.role}
        try:
            watcher(what, {**sandbox, "isolation": self.isolation, **details})
        except Exception as exc:
            log.warning("sandbox watcher failed on %s: %s", what, exc)

    def _tell_death(self, box: Box, code: int | None, oom: bool, *, during_cell: bool) -> None:
        """The sandbox ended by itself or from outside: ``oom`` or ``killed`` (exited)."""
        if self._closing:
            return  # ``close`` said ``stopped``
        if oom:
            self._tell("oom", box, memory_bytes=box.limits.memory_bytes, during_cell=during_cell)
        else:
            self._tell("killed", box, reason="exited", exit_code=code, during_cell=during_cell)

    def _discard(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            box.destroy()

    def _launch(self, limits: SandboxLimits | None = None) -> Box:
        """Start one sandbox and handshake its agent. Never leaks one when this fails."""
        limits = limits or self.limits
        if not self._image_checked:
            self.launcher.prepare(self.image)
            self._image_checked = True
        base = self.launcher.socket_base(self.socket_base)
        sock_dir = Path(tempfile.mkdtemp(prefix=f"s{os.getpid()}-", dir=base))
        box = launch_sandbox(
            self.launcher,
            sock_dir,
            limits=limits,
            labels=self.labels(),
            image=self.image,
            agent_dir=self.agent_dir,
            role=self.role,
            ready_timeout_s=self.ready_timeout_s,
        )
        self._tell(
            "started",
            box,
            memory_bytes=limits.memory_bytes,
            cpus=limits.cpus,
            pids_limit=limits.pids_limit,
        )
        return box


__all__ = ["SandboxLifecycle"]
