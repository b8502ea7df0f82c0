"""``KernelSandboxes``: the sandbox containers of one kernel, one per image.

Owns the Docker client (and the reaper of dead kernels' containers it runs once), the
isolation choice (``WFLO_ISOLATION``, made once), creating each image's persistent
``SandboxSession`` on demand, the pre-warm after ``%load_ext``, the idle watchdog,
restart and interrupt, and closing them all. Each sandbox's life (started, stopped,
killed, OOM) and each container the reaper removed is told to ``on_change`` (the
session's ``SessionEvents``, which makes ``sandbox.*`` events of them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.errors import WfloError

if TYPE_CHECKING:
    import docker

    from wflo_jupyter.sandbox.lifecycle import SandboxWatcher
    from wflo_jupyter.sandbox.session import SandboxSession

log = logging.getLogger(__name__)


class KernelSandboxes:
    """The kernel's sandboxes. Thread-safe; ``close`` is final."""

    def __init__(
        self,
        session_id: str,
        *,
        isolation: str | None,
        docker_host: str | None,
        idle_timeout_s: float,
        on_change: SandboxWatcher | None = None,
    ) -> None:
        self.session_id = session_id
        self.requested_isolation = isolation
        self.docker_host = docker_host
        self.idle_timeout_s = idle_timeout_s
        self.on_change = on_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._docker: docker.DockerClient | None = None
        self._sandboxes: dict[str, SandboxSession] = {}
        self._isolation: str | None = None
        self._watchdog: threading.Thread | None = None
        self._prewarm_threads: list[threading.Thread] = []

    def docker_client(self) -> docker.DockerClient:
        """The Docker client (connected on first use, when the reaper runs once)."""
        with self._lock:
            if self._docker is None:
                from wflo_jupyter.sandbox.docker_engine import connect_docker
                from wflo_jupyter.sandbox.orphans import reap_orphans

                self._docker = connect_docker(self.docker_host)
                try:
                    removed = reap_orphans(self._docker)
                    if removed:
                        log.info("removed %d sandbox containers of dead kernels", len(removed))
                    for container_id in removed:
                        self._tell("reaped", {"sandbox_id": container_id})
                except Exception as exc:  # cleaning up others' leftovers must not block us
                    log.warning("sandbox reaper: %s", exc)
            return self._docker

    def isolation(self) -> str:
        """The isolation mode of this kernel's sandboxes (chosen once: WFLO_ISOLATION)."""
        if self._isolation is None:
            from wflo_jupyter.sandbox.isolation import choose_isolation

            self._isolation = choose_isolation(self.requested_isolation, self.docker_host)
        return self._isolation

    def sandbox_for(self, image: str) -> SandboxSession:
        """The kernel's persistent sandbox for ``image`` (created on demand)."""
        from wflo_jupyter.sandbox.isolation import open_sandbox_session

        with self._lock:
            sandbox = self._sandboxes.get(image)
        if sandbox is not None:
            return sandbox
        if self._closed:
            raise WfloError("this wflo session is closed; %load_ext wflo_jupyter starts a new one")
        created = open_sandbox_session(self.isolation(), self.session_id, image, self.docker_client)
        created.on_change = self.on_change
        with self._lock:
            return self._sandboxes.setdefault(image, created)

    def discard(self, image: str) -> None:
        """Forget the sandbox for ``image``, if any (its state is dropped); its container
        is removed in the background (``close`` waits for that)."""
        with self._lock:
            sandbox = self._sandboxes.pop(image, None)
        if sandbox is None:
            return

        def remove() -> None:
            with contextlib.suppress(Exception):
                sandbox.close()

        thread = threading.Thread(target=remove, name="wflo-sandbox-discard", daemon=True)
        thread.start()
        self._prewarm_threads.append(thread)

    def _tell(self, what: str, details: dict[str, Any]) -> None:
        if self.on_change is not None:
            try:
                self.on_change(what, details)
            except Exception as exc:
                log.warning("sandbox watcher failed on %s: %s", what, exc)

    def ids(self) -> list[str]:
        """The ids of the running sandboxes (container ids, ``bwrap-<pid>``, ...)."""
        with self._lock:
            sandboxes = list(self._sandboxes.values())
        return [s.container_id for s in sandboxes if s.container_id is not None]

    def prewarm(self, image: str) -> threading.Thread:
        """Start the sandbox for ``image`` in the background (errors are logged and
        reported again by the first cell that needs it)."""

        def warm() -> None:
            try:
                self.sandbox_for(image).start()
            except Exception as exc:
                log.info("sandbox pre-warm skipped: %s", exc)

        thread = threading.Thread(target=warm, name="wflo-prewarm", daemon=True)
        thread.start()
        self._prewarm_threads.append(thread)
        self.ensure_watchdog()
        return thread

    def ensure_watchdog(self) -> None:
        """Start the thread that stops sandboxes idle for ``idle_timeout_s``."""
        if self._watchdog is not None:
            return

        def watch() -> None:
            while not self._stop.wait(min(30.0, max(1.0, self.idle_timeout_s / 4))):
                for sandbox in self._all():
                    with contextlib.suppress(Exception):
                        sandbox.stop_if_idle(self.idle_timeout_s)

        self._watchdog = threading.Thread(target=watch, name="wflo-idle-watchdog", daemon=True)
        self._watchdog.start()

    def _all(self) -> list[SandboxSession]:
        with self._lock:
            return list(self._sandboxes.values())

    def restart(self) -> None:
        """Replace every sandbox (their state is dropped)."""
        for sandbox in self._all():
            sandbox.restart()

    def interrupt(self) -> None:
        """Interrupt the cell running in any of the sandboxes."""
        for sandbox in self._all():
            sandbox.interrupt()

    def close(self) -> None:
        """Remove every sandbox (one still starting too) and close the Docker client."""
        self._closed = True
        self._stop.set()
        for thread in self._prewarm_threads:
            thread.join(timeout=30)
        with self._lock:
            sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
        for sandbox in sandboxes:
            with contextlib.suppress(Exception):
                sandbox.close()
        if self._docker is not None:
            with contextlib.suppress(Exception):
                self._docker.close()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
