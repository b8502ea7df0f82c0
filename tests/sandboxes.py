"""What the sandbox tests share: running a cell that must succeed, reading a result's
displays and isolation label, and finding what sandboxes left on the host (containers,
processes, socket directories, cgroups)."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

import docker

from tests.helpers import wait_until
from wflo_jupyter.sandbox.bwrap import shared_socket_base
from wflo_jupyter.sandbox.isolation import UNISOLATED_NOTICE
from wflo_jupyter.sandbox.session import ExecResult, SandboxSession, default_socket_base

MB = 1024**2
WEAKER = "[isolation: bubblewrap — weaker isolation than Docker:"
SANDBOX_IDS = {
    "docker": r"[0-9a-f]{64}",
    "bubblewrap": r"bwrap-\d+",
    "unisolated": r"host-\d+",
}
"""The shape of a sandbox's id (``ExecResult.container_id``) for each backend."""


def text_plain(result: ExecResult) -> list[str]:
    return [data.get("text/plain", "") for data, _ in result.displays]


def ok(session: SandboxSession, code: str, **options: Any) -> ExecResult:
    result = session.execute(code, **options)
    assert result.ok, result.error_line + "\n" + result.traceback
    return result


def weaker_notice(result: ExecResult) -> str:
    assert result.isolation == "bubblewrap"
    assert result.notices, "a bubblewrap result carries the isolation notice"
    notice = result.notices[0]
    assert notice.startswith(WEAKER), notice
    assert "weaker isolation" in notice
    return notice


def cell_notices(backend: str, result: ExecResult) -> list[str]:
    """Check that ``result`` is labelled as ``backend``'s (bubblewrap and unisolated: their
    isolation notice first, on every cell; Docker: no label) and return the notices that
    follow the label: what happened to this cell's sandbox."""
    assert result.isolation == backend
    if backend == "bubblewrap":
        weaker_notice(result)
        return result.notices[1:]
    if backend == "unisolated":
        assert result.notices[0] == UNISOLATED_NOTICE, result.notices
        return result.notices[1:]
    assert not any(n.startswith("[isolation") for n in result.notices), result.notices
    return result.notices


def session_containers(client: docker.DockerClient, session_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"org.wflo.session={session_id}"})


# -- the host's processes ---------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (ppid, cmdline) of every process on the host."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            table[int(entry.name)] = (ppid, Path(entry.path, "cmdline").read_bytes())
    return table


def sandbox_processes() -> list[int]:
    """Our descendants that belong to a sandbox (bwrap or an agent)."""
    table = proc_table()
    found: list[int] = []
    for pid, (_, cmdline) in table.items():
        if b"bwrap" not in cmdline and b"agent.py" not in cmdline:
            continue
        seen: set[int] = set()
        parent = table.get(pid, (0, b""))[0]
        while parent > 1 and parent not in seen:
            if parent == os.getpid():
                found.append(pid)
                break
            seen.add(parent)
            parent = table.get(parent, (0, b""))[0]
    return found


def processes_with(marker: str, timeout_s: float = 0.0) -> list[int]:
    """Host pids (anywhere on the host) whose command line contains ``marker``; with a
    timeout, polls until there are none (failing the test after ``timeout_s``)."""

    def found() -> list[int]:
        return [pid for pid, (_, cmd) in proc_table().items() if marker.encode() in cmd]

    if timeout_s <= 0:
        return found()
    wait_until(lambda: not found(), timeout_s, interval=0.05, what=f"no process with {marker!r}")
    return []


def sandbox_pid(sandbox_id: str | None) -> int:
    """The host pid in a process backend's sandbox id (``bwrap-<pid>``, ``host-<pid>``)."""
    assert sandbox_id is not None and re.fullmatch(r"[a-z]+-\d+", sandbox_id), sandbox_id
    return int(sandbox_id.rsplit("-", 1)[1])


def unique_sleep() -> str:
    """A ``sleep`` duration that marks one test's daemon process (``sleep 300.<digits>``)."""
    return f"300.{uuid.uuid4().int % 10**9:09d}"


# -- what sandboxes leave behind --------------------------------------------------------


def leftover_dirs() -> set[str]:
    """This process's sandbox socket (and unisolated work) directories."""
    prefix = f"s{os.getpid()}-"
    found: set[str] = set()
    for base in (default_socket_base(), shared_socket_base()):
        if base.is_dir():
            found |= {str(p) for p in base.iterdir() if p.name.startswith(prefix)}
    return found


def leftover_cgroups(pid: int | None = None) -> list[str]:
    """The cgroups that the kernel process ``pid`` (default: this one) made for its
    bubblewrap sandboxes."""
    prefix = f"wflo-{os.getpid() if pid is None else pid}-"
    found: list[str] = []
    root = Path("/sys/fs/cgroup")
    for top, dirs, _ in os.walk(root):
        depth = len(Path(top).relative_to(root).parts)
        found += [os.path.join(top, d) for d in dirs if d.startswith(prefix)]
        if depth >= 6:
            dirs[:] = []
    return found
