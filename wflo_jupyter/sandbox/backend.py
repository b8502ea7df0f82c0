"""The isolation backend's interface: an ``AgentLauncher`` starts agents with one kind of
isolation, each as an ``AgentHandle`` the session polls, waits for, kills and destroys.

Backends: ``sandbox.docker_backend.DockerLauncher`` (hardened containers, the default),
``sandbox.bwrap.BubblewrapLauncher`` (weaker, labelled on every cell) and
``sandbox.isolation.UnisolatedLauncher`` (none, only when asked for). The channel,
protocol, timeouts and death detection are the session's and the same for all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from wflo_jupyter.sandbox.socket_dirs import (
    default_socket_base,
    grant_sandbox_access,
    private_dir,
)
from wflo_jupyter.sandbox.types import LaunchRequest, SandboxLimits


class AgentHandle(ABC):
    """One started agent (a container, a bubblewrap sandbox, a host process)."""

    notice: str | None = None
    """A one-line notice every cell run by this agent carries (the isolation it gets
    when that is weaker than Docker's), or None."""

    @property
    @abstractmethod
    def id(self) -> str:
        """Container id, or ``bwrap-<pid>`` / ``host-<pid>``."""

    @property
    def pid(self) -> int | None:
        """The host pid of the launched process (None for a container)."""
        return None

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code once the agent has ended (signals as 128+N), else None."""

    def known_dead(self) -> bool:
        """True when it is already known, without asking an engine, that the sandbox has
        ended (a process that exited); False when unknown (the channel tells)."""
        return False

    @abstractmethod
    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        """(exit code, or None if it had to be killed; OOM-killed?) once it ended."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL everything the agent started (idempotent, never raises)."""

    @abstractmethod
    def destroy(self) -> None:
        """Kill it and remove everything it left (idempotent, never raises)."""

    @abstractmethod
    def apply_limits(self, limits: SandboxLimits) -> str | None:
        """Change memory / CPU / pids limits in place: None, or why that failed."""

    def logs_tail(self) -> str:
        """The last lines the agent wrote to its own stderr (for start-up failures)."""
        return ""

    def explain_error(self, ename: str, limits: SandboxLimits) -> str | None:
        """A one-line explanation of a cell error this sandbox caused (e.g. which limit
        raised a ``MemoryError``), or None."""
        return None


class AgentLauncher(ABC):
    """Starts agents with one kind of isolation (``isolation`` names it)."""

    isolation: str = ""

    def prepare(self, image: str) -> None:  # noqa: B027 - optional hook
        """Checks before the first launch of a session (e.g. that ``image`` exists)."""

    def socket_base(self, requested: Path | None) -> Path:
        """The private directory under which per-sandbox socket directories are made."""
        base = requested or default_socket_base()
        # A Unix socket path has to fit in 108 bytes.
        if len(str(base)) > 60:
            base = default_socket_base()
        return private_dir(base)

    def grant_access(self, directory: Path, sock_path: Path) -> None:
        """Let the sandbox's user connect to the socket (Docker's uid 1000 by default)."""
        grant_sandbox_access(directory, sock_path)

    @abstractmethod
    def launch(self, request: LaunchRequest) -> AgentHandle:
        """Start the agent (``SandboxError`` if that failed; never leaks it)."""


__all__ = ["AgentHandle", "AgentLauncher"]
