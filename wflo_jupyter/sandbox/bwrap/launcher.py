"""``BubblewrapLauncher``: starts the session agent under ``bwrap`` (see ``sandbox.bwrap``
for the sandbox it gets), in its own cgroup where one can be made, and from one
long-lived thread (``--die-with-parent`` follows the thread that forked it).
``BubblewrapAgent`` changes a running sandbox's limits through its cgroup and
``prlimit``. ``reap_bubblewrap_leftovers`` removes what dead kernels' sandboxes left.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from wflo_jupyter import procfs
from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import format_size
from wflo_jupyter.sandbox.backend import AgentHandle, AgentLauncher
from wflo_jupyter.sandbox.bwrap.argv import (
    HOST_ENV,
    SANDBOX_GID,
    SYNTHETIC_ETC,
    args_pipe,
    host_command,
    sandbox_arguments,
)
from wflo_jupyter.sandbox.bwrap.cgroups import (
    CGROUP_CONTROLLERS,
    Cgroup,
    cgroup_parents,
    reap_stale,
)
from wflo_jupyter.sandbox.bwrap.probe import (
    MODE_ROOT,
    SANDBOX_PYTHON,
    BwrapSupport,
    probe_bubblewrap,
)
from wflo_jupyter.sandbox.bwrap.scripts import LIMITS_SHIM, PRLIMIT_SHIM
from wflo_jupyter.sandbox.orphans import reap_socket_dirs
from wflo_jupyter.sandbox.processes import ProcessAgent, Spawner
from wflo_jupyter.sandbox.socket_dirs import default_socket_base, owned_dir
from wflo_jupyter.sandbox.types import (
    AGENT_MOUNT,
    MB,
    SANDBOX_UID,
    SOCKET_MOUNT,
    LaunchRequest,
    SandboxLimits,
)

ADDRESS_SPACE_HEADROOM = 512 * MB
"""Added to the memory limit when it becomes ``RLIMIT_AS`` (no cgroup memory controller):
address space is not memory, and the idle agent already reserves ~390 MB of it (thread
stacks, malloc arenas) with ~21 MB resident (measured, Debian 12, python 3.11)."""

_spawner = Spawner(HOST_ENV)
"""Starts every bubblewrap sandbox of this process (one thread: see ``Spawner``)."""
_leftovers_reaped = threading.Event()
"""Set once the first launcher of this process removed dead kernels' leftovers."""


class BubblewrapAgent(ProcessAgent):
    """The agent under bwrap: limits change through the cgroup and ``prlimit``."""

    def __init__(
        self, proc: subprocess.Popen[bytes], *, support: BwrapSupport, **kwargs: Any
    ) -> None:
        super().__init__(proc, **kwargs)
        self.support = support

    @property
    def memory_by_cgroup(self) -> bool:
        return self.cgroup is not None and "memory" in self.cgroup.controllers

    def explain_error(self, ename: str, limits: SandboxLimits) -> str | None:
        if ename == "MemoryError" and not self.memory_by_cgroup:
            return (
                f"the sandbox's memory limit {format_size(limits.memory_bytes)} was reached "
                "(an address-space rlimit: no cgroup memory controller here); state is kept"
            )
        return None

    def _agent_pid(self) -> int | None:
        """The agent's host pid: the python whose argv[2] is the agent (bwrap's own
        processes carry the same words further along their command lines)."""
        agent = f"{AGENT_MOUNT}/agent.py".encode()
        for pid in procfs.descendants([self.proc.pid]):
            argv = procfs.cmdline(pid)
            if len(argv) > 2 and argv[1] == b"-I" and argv[2] == agent:
                return pid
        return None

    def apply_limits(self, limits: SandboxLimits) -> str | None:
        problems: list[str] = []
        if self.cgroup is not None:
            try:
                self.cgroup.set_limits(limits)
            except OSError as exc:
                problems.append(f"cgroup: {exc.strerror or exc}")
        pid = self._agent_pid()
        if pid is None:
            problems.append("the agent process was not found")
        else:
            space = -1 if self.memory_by_cgroup else limits.memory_bytes + ADDRESS_SPACE_HEADROOM
            problem = self._prlimit(pid, space, limits.pids_limit)
            if problem:
                problems.append(f"prlimit: {problem}")
        return "; ".join(problems) or None

    def _prlimit(self, pid: int, space: int, nproc: int) -> str | None:
        if not self.support.drops_privileges:
            try:
                if space >= 0:
                    resource.prlimit(pid, resource.RLIMIT_AS, (space, space))
                resource.prlimit(pid, resource.RLIMIT_NPROC, (nproc, nproc))
            except OSError as exc:
                return exc.strerror or str(exc)
            return None
        try:
            done = subprocess.run(
                [
                    self.support.python,
                    "-I",
                    "-S",
                    "-c",
                    PRLIMIT_SHIM,
                    str(pid),
                    str(space),
                    str(nproc),
                ],
                capture_output=True,
                text=True,
                env=HOST_ENV,
                cwd="/",
                user=SANDBOX_UID,
                group=SANDBOX_GID,
                extra_groups=[],
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return lines[-1] if lines else f"exit code {done.returncode}"
        return None


def shared_socket_base() -> Path:
    """Where root's bubblewrap sandboxes keep their sockets (uid 1000 must reach them)."""
    return Path(tempfile.gettempdir()) / f"wflo-{os.geteuid()}-bwrap"


def reap_bubblewrap_leftovers() -> list[Path]:
    """Remove socket/agent directories and empty cgroups of dead kernels' bubblewrap
    sandboxes (their processes died with the kernel: ``--die-with-parent``)."""
    removed: list[Path] = []
    for base in (default_socket_base(), shared_socket_base()):
        removed += reap_socket_dirs(base)
    for parent in cgroup_parents():
        removed += reap_stale(parent)
    return removed


def isolation_notice(support: BwrapSupport, cgroup: Cgroup | None) -> str:
    """The one line every cell of a bubblewrap sandbox carries."""
    weaker = ["no seccomp filter", "the host's /usr is visible read-only"]
    if support.mode == MODE_ROOT:
        weaker.append("runs as host root without capabilities")
    limited = cgroup.controllers if cgroup is not None else ()
    if len(limited) == len(CGROUP_CONTROLLERS):
        limits = "cgroup limits on memory, pids, cpu"
    else:
        missing = []
        if "memory" not in limited:
            missing.append("no cgroup memory limit (RLIMIT_AS caps address space)")
        if "pids" not in limited:
            missing.append("processes capped by RLIMIT_NPROC only")
        if "cpu" not in limited:
            missing.append("no CPU limit")
        limits = ", ".join(missing)
    return f"[isolation: bubblewrap — weaker isolation than Docker: {', '.join(weaker)}; {limits}]"


class BubblewrapLauncher(AgentLauncher):
    """Runs the agent under bubblewrap (``isolation == "bubblewrap"``). The runtime image
    does not exist here: cells get the host's system ``python3`` and its packages."""

    isolation = "bubblewrap"

    def __init__(
        self,
        bwrap: str | None = None,
        *,
        python: str = SANDBOX_PYTHON,
        use_cgroup: bool = True,
        mode: str | None = None,
    ) -> None:
        self.bwrap = bwrap
        self.python = python
        self.use_cgroup = use_cgroup
        self.mode = mode
        self._support: BwrapSupport | None = None

    @property
    def support(self) -> BwrapSupport:
        if self._support is None:
            self._support = probe_bubblewrap(self.bwrap, python=self.python, mode=self.mode)
        return self._support

    def prepare(self, image: str) -> None:
        _ = self.support
        if not _leftovers_reaped.is_set():
            _leftovers_reaped.set()
            with contextlib.suppress(OSError):
                reap_bubblewrap_leftovers()

    def socket_base(self, requested: Path | None) -> Path:
        if self.support.drops_privileges:  # 0711: uid 1000 may pass through, not list
            return owned_dir(shared_socket_base(), 0o711)
        return super().socket_base(requested)

    def grant_access(self, directory: Path, sock_path: Path) -> None:
        # drop: the sandbox is uid 1000 on the host too; user / root: it is our own uid.
        if self.support.drops_privileges:
            os.chown(directory, SANDBOX_UID, SANDBOX_GID)
            os.chown(sock_path, SANDBOX_UID, SANDBOX_GID)

    def _aux_dir(self, request: LaunchRequest) -> Path:
        """The sandbox's private agent copy and synthetic ``/etc`` files."""
        aux = Path(f"{request.sock_dir}-aux")
        aux.mkdir(mode=0o700)
        (aux / "agent").mkdir(mode=0o755)
        for source in request.agent_dir.glob("*.py"):
            target = aux / "agent" / source.name
            shutil.copyfile(source, target)
            target.chmod(0o644)
        (aux / "etc").mkdir(mode=0o755)
        for name, text in SYNTHETIC_ETC.items():
            (aux / "etc" / name).write_text(text, encoding="utf-8")
            (aux / "etc" / name).chmod(0o644)
        if self.support.drops_privileges:
            os.chown(aux, SANDBOX_UID, SANDBOX_GID)
        return aux

    def launch(self, request: LaunchRequest) -> AgentHandle:
        support = self.support
        limits = request.limits
        aux: Path | None = None
        cgroup: Cgroup | None = None
        try:
            aux = self._aux_dir(request)
            if self.use_cgroup:
                cgroup = Cgroup.create(f"wflo-{os.getpid()}-{secrets.token_hex(4)}", limits)
            memory_by_cgroup = cgroup is not None and "memory" in cgroup.controllers
            inner = [
                support.python,
                "-I",
                "-S",
                "-c",
                LIMITS_SHIM,
                str(-1 if memory_by_cgroup else limits.memory_bytes + ADDRESS_SPACE_HEADROOM),
                str(limits.pids_limit),
                "0",
                "--",
                support.python,
                "-I",
                f"{AGENT_MOUNT}/agent.py",
                f"{SOCKET_MOUNT}/{request.socket_name}",
            ]
            args = sandbox_arguments(
                support,
                limits=limits,
                environment=request.environment,
                aux_dir=aux,
                sock_dir=request.sock_dir,
            )
            read_end = args_pipe(args)
            try:
                join = cgroup.procs_files() if cgroup is not None else []
                argv = host_command(support, read_end, inner, join)
                proc = _spawner.popen(argv, (read_end,))
            finally:
                os.close(read_end)
        except (OSError, subprocess.SubprocessError) as exc:
            if cgroup is not None:
                cgroup.remove()
            if aux is not None:
                shutil.rmtree(aux, ignore_errors=True)
            raise SandboxError(
                f"could not start the bubblewrap sandbox: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            if aux is not None:
                shutil.rmtree(aux, ignore_errors=True)
            raise
        return BubblewrapAgent(
            proc,
            support=support,
            id_prefix="bwrap",
            cleanup=[aux],
            cgroup=cgroup,
            notice=isolation_notice(support, cgroup),
        )


__all__ = [
    "ADDRESS_SPACE_HEADROOM",
    "BubblewrapAgent",
    "BubblewrapLauncher",
    "isolation_notice",
    "reap_bubblewrap_leftovers",
    "shared_socket_base",
]
