"""The Docker engine as the sandboxes use it: connecting, checking the runtime image, and
the hardening every sandbox container gets.

``hardened_options``: no network, uid 1000, read-only root with a size-limited tmpfs
``/workspace`` and ``/tmp``, all capabilities dropped, no-new-privileges, memory (no swap),
pids and CPU limits, and only the environment given. ``LABEL_PREFIX`` names the labels that
tie a container to its kernel (``reap_orphans`` reaps by them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import docker
import requests
from docker.errors import DockerException, ImageNotFound

from wflo_jupyter.core.errors import EngineUnavailable, SandboxError

LABEL_PREFIX = "org.wflo"
WORKSPACE_TMPFS_SIZE = "256m"
TMP_TMPFS_SIZE = "64m"


def hardened_options(
    *,
    memory_bytes: int,
    cpus: float,
    pids_limit: int,
    labels: Mapping[str, str],
    environment: Mapping[str, str],
    workspace_size: str = WORKSPACE_TMPFS_SIZE,
    tmp_size: str = TMP_TMPFS_SIZE,
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` that every sandbox container gets:
    no network, uid 1000, read-only root with size-limited tmpfs ``/workspace`` and
    ``/tmp``, all capabilities dropped, no-new-privileges (default seccomp stays on),
    memory (no swap) / pids / CPU limits, and exactly the ``environment`` given (the
    host's environment never reaches the container)."""
    return {
        "user": "1000:1000",
        "working_dir": "/workspace",
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {
            "/workspace": f"rw,size={workspace_size},uid=1000,gid=1000,mode=0700",
            "/tmp": f"rw,size={tmp_size},uid=1000,gid=1000,mode=1777",
        },
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": memory_bytes,
        "memswap_limit": memory_bytes,
        "pids_limit": pids_limit,
        "nano_cpus": int(cpus * 1e9),
        "environment": dict(environment),
        "labels": dict(labels),
    }


def check_image(client: docker.DockerClient, image: str) -> None:
    """``SandboxError`` (one line, with the build command) when ``image`` is missing."""
    try:
        client.images.get(image)
    except ImageNotFound:
        raise SandboxError(
            f"sandbox image {image!r} not found; build it with `wflo image build`"
        ) from None


def connect_docker(docker_host: str | None = None, timeout_s: float = 60.0) -> docker.DockerClient:
    """A client for ``docker_host`` (default: ``DOCKER_HOST`` / the local socket) that
    answered a ping; ``EngineUnavailable`` with a one-line hint otherwise."""
    try:
        client = (
            docker.DockerClient(base_url=docker_host, timeout=int(timeout_s))
            if docker_host
            else docker.from_env(timeout=int(timeout_s))
        )
        client.ping()
        return client
    except (DockerException, requests.RequestException) as exc:
        where = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise EngineUnavailable(
            f"Docker engine not reachable at {where} ({type(exc).__name__}); "
            "start one with `make docker` (scripts/ensure-docker.sh)"
        ) from None


__all__ = [
    "LABEL_PREFIX",
    "TMP_TMPFS_SIZE",
    "WORKSPACE_TMPFS_SIZE",
    "check_image",
    "connect_docker",
    "hardened_options",
]
