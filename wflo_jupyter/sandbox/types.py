"""The values the session and its isolation backends exchange, and the sandbox's layout.

``SandboxLimits`` (what one sandbox may use), ``ExecResult`` (what one cell did),
``LaunchRequest`` (what a launcher needs to start one agent), and what every backend
gives the agent: where the agent and its socket are mounted, the sandbox user, and the
whole environment a sandbox gets; the default runtime image and output cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wflo_jupyter.sandbox.docker_engine import TMP_TMPFS_SIZE, WORKSPACE_TMPFS_SIZE

MB = 1024 * 1024
DEFAULT_IMAGE = "wflo-runtime:python3.11"
DEFAULT_OUTPUT_CAP = 10 * MB
AGENT_MOUNT = "/opt/wflo-agent"
SOCKET_MOUNT = "/run/wflo"
SOCKET_NAME = "agent.sock"
SANDBOX_UID = 1000
ENV_ALLOWLIST = ("HOME", "PATH", "LANG", "PYTHONUNBUFFERED", "MPLBACKEND", "MPLCONFIGDIR")
SANDBOX_ENV = {
    "HOME": "/workspace",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/tmp",
}
"""The whole environment of a sandbox (plus the agent's token, which the agent removes
from ``os.environ`` before any cell runs). Nothing from the host's environment."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of a sandbox container (memory without swap)."""

    memory_bytes: int = 512 * MB
    cpus: float = 1.0
    pids_limit: int = 128
    workspace_size: str = WORKSPACE_TMPFS_SIZE
    tmp_size: str = TMP_TMPFS_SIZE


@dataclass
class ExecResult:
    """The outcome of one cell in a sandbox session.

    ``exit_reason``: ``ok`` | ``error`` (the code raised) | ``timeout`` | ``interrupted``
    | ``oom`` | ``killed`` (the session was closed under the cell) | ``agent_died``.
    ``state_lost``: the namespace the earlier cells built is gone (this cell's failure
    destroyed the container, or the container had been stopped or had died since the last
    cell and this cell ran in a new one); ``notices`` say which, one line each.
    ``isolation``: ``docker`` | ``bubblewrap`` | ``unisolated``; the two weaker ones put
    a one-line notice saying so first in ``notices`` of every cell.
    """

    ok: bool
    exit_reason: str
    ename: str = ""
    evalue: str = ""
    traceback: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    output_errors: dict[str, str] = field(default_factory=dict)
    # the agent's ``--out`` payloads as sent (safe formats, still encoded): what a
    # ``wflo worker`` hands on to the kernel, which decodes them itself
    output_payloads: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    displays: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0
    state_lost: bool = False
    notices: list[str] = field(default_factory=list)
    execution_count: int | None = None
    container_id: str = ""
    isolation: str = "docker"

    @property
    def error_line(self) -> str:
        """``"ename: evalue"`` (empty when the cell succeeded)."""
        if self.ok:
            return ""
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename


@dataclass(frozen=True)
class LaunchRequest:
    """What a launcher needs to start one agent: it must run ``agent.py`` from
    ``agent_dir`` with the Unix socket ``sock_dir / socket_name`` as its argument (where
    the sandbox sees it), ``token`` in ``WFLO_AGENT_TOKEN`` and ``SANDBOX_ENV`` as the
    rest of its environment, within ``limits``."""

    sock_dir: Path
    socket_name: str
    token: str
    limits: SandboxLimits
    labels: Mapping[str, str]
    image: str
    agent_dir: Path
    role: str

    @property
    def environment(self) -> dict[str, str]:
        return {**SANDBOX_ENV, "WFLO_AGENT_TOKEN": self.token}


__all__ = [
    "AGENT_MOUNT",
    "DEFAULT_IMAGE",
    "DEFAULT_OUTPUT_CAP",
    "MB",
    "SANDBOX_ENV",
    "SANDBOX_UID",
    "SOCKET_MOUNT",
    "SOCKET_NAME",
    "ExecResult",
    "LaunchRequest",
    "SandboxLimits",
]
