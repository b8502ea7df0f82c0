"""Removing what dead kernels left: their ``org.wflo.*`` containers and their socket
directories (``s<kernel pid>-*``).

A kernel counts as dead when its pid is gone from this host, or was reused by a process
that started after the container was created (``procfs.started_at``). The sandboxes' own
agents stop by themselves when their channel closes; this removes what stays behind.
"""

from __future__ import annotations

import os
import shutil
import socket
from datetime import datetime
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

from wflo_jupyter import procfs
from wflo_jupyter.sandbox.docker_engine import LABEL_PREFIX
from wflo_jupyter.sandbox.socket_dirs import default_socket_base


def _started_after(pid: int, moment: datetime) -> bool:
    """True if process ``pid`` started after ``moment`` (its pid was reused); False if
    unknown (no /proc)."""
    started = procfs.started_at(pid)
    return started is not None and started > moment.timestamp() + 2


def kernel_alive(pid: int, created: str | None = None) -> bool:
    """Is ``pid`` a live process on this host that existed when ``created`` (ISO time)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if created:
        try:
            moment = datetime.fromisoformat(created)
        except ValueError:
            return True
        if _started_after(pid, moment):
            return False
    return True


def reap_orphans(client: docker.DockerClient, *, socket_base: Path | None = None) -> list[str]:
    """Remove ``org.wflo.*`` containers whose kernel process is gone from this host (and
    their leftover socket directories). Returns the ids of the removed containers."""
    host = socket.gethostname()
    removed: list[str] = []
    found = client.containers.list(all=True, filters={"label": f"{LABEL_PREFIX}.kernel-pid"})
    for container in found:
        labels = container.labels or {}
        if labels.get(f"{LABEL_PREFIX}.hostname", host) != host:
            continue
        try:
            pid = int(labels.get(f"{LABEL_PREFIX}.kernel-pid", ""))
        except ValueError:
            continue
        if pid == os.getpid() or kernel_alive(pid, labels.get(f"{LABEL_PREFIX}.created")):
            continue
        try:
            container.remove(force=True)
        except NotFound:
            continue
        except APIError:
            continue
        removed.append(container.id or "")
    reap_socket_dirs(socket_base or default_socket_base())
    return removed


def reap_socket_dirs(base: Path) -> list[Path]:
    """Remove the ``s<kernel pid>-*`` directories under ``base`` whose kernel is gone."""
    removed: list[Path] = []
    if base.is_dir():
        for entry in base.iterdir():
            if left_by_dead_kernel(entry.name, "s"):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def left_by_dead_kernel(name: str, prefix: str) -> bool:
    """``name`` is ``<prefix><kernel pid>-...`` of another kernel, which is gone."""
    pid_text = name[len(prefix) :].split("-", 1)[0]
    return (
        name.startswith(prefix)
        and pid_text.isdigit()
        and int(pid_text) != os.getpid()
        and not kernel_alive(int(pid_text))
    )


__all__ = ["kernel_alive", "left_by_dead_kernel", "reap_orphans", "reap_socket_dirs"]
