"""Which isolation a kernel's sandbox gets: ``WFLO_ISOLATION`` = auto | docker |
bubblewrap | unisolated.

- ``docker`` (strongest): a hardened container per session (``docker_backend.DockerLauncher``).
- ``bubblewrap`` (weaker, labelled on every cell): the same agent under ``bwrap`` with the
  host's system ``python3`` (``bwrap.BubblewrapLauncher``).
- ``unisolated`` (none, labelled loudly on every cell; only when asked for by name): the
  agent as a plain subprocess of the kernel, with the kernel user's permissions. The
  environment is still scrubbed (provider keys stay out of the cell's ``os.environ``) and
  timeouts still interrupt, then kill.
- ``auto``: docker when an engine answers a ping, else bubblewrap when ``bwrap`` works
  here, else a one-line ``SandboxError`` saying how to get either (never unisolated).

``open_sandbox_session`` builds the ``SandboxSession`` for a chosen mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from wflo_jupyter.core.errors import ConfigError, EngineUnavailable, SandboxError
from wflo_jupyter.sandbox.backend import AgentHandle, AgentLauncher
from wflo_jupyter.sandbox.bwrap import BubblewrapLauncher, probe_bubblewrap
from wflo_jupyter.sandbox.docker_engine import connect_docker
from wflo_jupyter.sandbox.processes import ProcessAgent
from wflo_jupyter.sandbox.session import SandboxSession
from wflo_jupyter.sandbox.types import LaunchRequest

ISOLATION_MODES = ("auto", "docker", "bubblewrap", "unisolated")
DOCKER = "docker"
BUBBLEWRAP = "bubblewrap"
UNISOLATED = "unisolated"
UNISOLATED_NOTICE = "[isolation: NONE — this cell runs on your machine with your permissions]"
NO_ISOLATION = (
    "no Docker engine answers and bubblewrap is not installed: start Docker (make docker), "
    "install bubblewrap, or set WFLO_ISOLATION=unisolated to run cells on the host "
    "without isolation (NOT recommended)"
)
DOCKER_PING_TIMEOUT_S = 3.0


def normalize_isolation(requested: str | None) -> str:
    """``requested`` (a ``WFLO_ISOLATION`` value; empty means auto) as one of
    ``ISOLATION_MODES``; ``ConfigError`` (one line) for anything else."""
    mode = (requested or "auto").strip().lower()
    if mode not in ISOLATION_MODES:
        raise ConfigError(
            f"WFLO_ISOLATION={requested!r} is not one of {', '.join(ISOLATION_MODES)}"
        )
    return mode


def docker_answers(docker_host: str | None, timeout_s: float = DOCKER_PING_TIMEOUT_S) -> bool:
    """Does a Docker engine at ``docker_host`` (default: ``DOCKER_HOST`` / the local
    socket) answer a ping within about ``timeout_s``?"""
    try:
        client = connect_docker(docker_host, timeout_s=max(1.0, timeout_s))
    except EngineUnavailable:
        return False
    client.close()
    return True


def choose_isolation(
    requested: str | None,
    docker_host: str | None,
    *,
    bwrap: str | None = None,
    path: str | None = None,
) -> str:
    """The isolation to use: an explicit ``docker`` / ``bubblewrap`` / ``unisolated`` is
    returned as is (its own start-up reports what is missing); ``auto`` is ``docker`` if
    an engine answers a quick ping, else ``bubblewrap`` if ``bwrap`` (at ``bwrap``, or on
    ``path`` / ``PATH``) runs a sandbox here (probed once per process), else a one-line
    ``SandboxError``. ``auto`` never picks ``unisolated``."""
    mode = normalize_isolation(requested)
    if mode != "auto":
        return mode
    if docker_answers(docker_host):
        return DOCKER
    try:
        probe_bubblewrap(bwrap, path=path)
    except SandboxError as exc:
        raise _no_isolation(exc) from None
    return BUBBLEWRAP


def _no_isolation(bwrap_problem: SandboxError) -> SandboxError:
    if "not installed" in str(bwrap_problem):
        return SandboxError(NO_ISOLATION)
    return SandboxError(
        f"no Docker engine answers and bubblewrap does not work here ({bwrap_problem}): "
        "start Docker (make docker), fix bubblewrap, or set WFLO_ISOLATION=unisolated to "
        "run cells on the host without isolation (NOT recommended)"
    )


class UnisolatedLauncher(AgentLauncher):
    """The agent as a plain host subprocess (``isolation == "unisolated"``): same channel,
    protocol, timeouts and death detection, NO isolation. Its working directory and
    ``HOME`` are a private temporary directory; its environment is ``SANDBOX_ENV``."""

    isolation = UNISOLATED

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def grant_access(self, directory: Path, sock_path: Path) -> None:
        """The agent runs as the kernel's own user: nothing to open up."""

    def launch(self, request: LaunchRequest) -> AgentHandle:
        workdir = Path(f"{request.sock_dir}-work")
        try:
            workdir.mkdir(mode=0o700)
            environment = {
                **request.environment,
                "HOME": str(workdir),
                "MPLCONFIGDIR": str(workdir),
            }
            proc = subprocess.Popen(
                [
                    self.python,
                    "-I",
                    str(request.agent_dir / "agent.py"),
                    str(request.sock_dir / request.socket_name),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=environment,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(
                f"could not start the unisolated agent: {type(exc).__name__}: {exc}"
            ) from None
        return ProcessAgent(
            proc, id_prefix="host", cleanup=[workdir], notice=UNISOLATED_NOTICE, kill_group=True
        )


def open_sandbox_session(
    isolation: str,
    session_id: str,
    image: str,
    docker_client_factory: Callable[[], docker.DockerClient],
    *,
    bwrap: str | None = None,
    **options: Any,
) -> SandboxSession:
    """The kernel's ``SandboxSession`` for ``image`` with ``isolation`` (a
    ``choose_isolation`` result; ``auto`` is resolved here the same way, with
    ``docker_client_factory`` as the ping). ``options`` go to ``SandboxSession`` (limits,
    timeouts, ...). ``docker_client_factory`` is only called for Docker."""
    mode = normalize_isolation(isolation)
    if mode == "auto":
        try:
            client = docker_client_factory()
        except EngineUnavailable:
            try:
                probe_bubblewrap(bwrap)
            except SandboxError as exc:
                raise _no_isolation(exc) from None
            mode = BUBBLEWRAP
        else:
            return SandboxSession(client, session_id, image=image, **options)
    if mode == DOCKER:
        return SandboxSession(docker_client_factory(), session_id, image=image, **options)
    launcher: AgentLauncher
    launcher = BubblewrapLauncher(bwrap) if mode == BUBBLEWRAP else UnisolatedLauncher()
    return SandboxSession(None, session_id, image=image, launcher=launcher, **options)


__all__ = [
    "BUBBLEWRAP",
    "DOCKER",
    "ISOLATION_MODES",
    "NO_ISOLATION",
    "UNISOLATED",
    "UNISOLATED_NOTICE",
    "UnisolatedLauncher",
    "choose_isolation",
    "docker_answers",
    "normalize_isolation",
    "open_sandbox_session",
]
