"""``DockerSandbox``: runs one piece of Python code in a locked-down container.

Hardening on every container: no network, uid 1000, read-only root with a tmpfs
``/workspace`` and ``/tmp``, all capabilities dropped, no-new-privileges, and memory,
pids and CPU limits. The container is always removed, including when its creation
failed half way (the variable is bound before ``try``, so cleanup never touches an
unassigned name).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from wflo_jupyter.core.errors import EngineUnavailable, SandboxError
from wflo_jupyter.core.steps import format_size

OUTPUT_CAP_BYTES = 10 * 1024 * 1024
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
            f"sandbox image {image!r} not found; build it with `make runtime-image`"
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


@dataclass(frozen=True)
class SandboxRun:
    """What one sandboxed run produced."""

    exit_code: int | None
    reason: str  # "ok" | "error" | "timeout" | "oom" | "killed"
    stdout: str
    stderr: str
    seconds: float
    container_id: str


def _decode(raw: bytes) -> str:
    if len(raw) > OUTPUT_CAP_BYTES:
        dropped = len(raw) - OUTPUT_CAP_BYTES
        raw = raw[:OUTPUT_CAP_BYTES]
        return (
            raw.decode("utf-8", "replace")
            + f"\n[wflo: output truncated, {dropped} bytes dropped]\n"
        )
    return raw.decode("utf-8", "replace")


class DockerSandbox:
    """Runs code in fresh hardened containers of a runtime image, for one session."""

    def __init__(self, client: docker.DockerClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id

    def labels(self, step_id: str) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}.session": self.session_id,
            f"{LABEL_PREFIX}.step": step_id,
            f"{LABEL_PREFIX}.kernel-pid": str(os.getpid()),
            f"{LABEL_PREFIX}.created": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def check_image(self, image: str) -> None:
        check_image(self.client, image)

    def run(
        self,
        code: str,
        *,
        step_id: str,
        image: str,
        timeout_s: float,
        memory_bytes: int,
        cpus: float,
        pids_limit: int,
    ) -> SandboxRun:
        """Run ``code`` with ``python3 -c`` and return its outcome (never raises for
        failures of the code itself; raises ``SandboxError`` when no container ran)."""
        self.check_image(image)
        container: Container | None = None
        started = time.monotonic()
        try:
            try:
                container = self.client.containers.create(
                    image,
                    ["python3", "-c", code],
                    detach=True,
                    **hardened_options(
                        memory_bytes=memory_bytes,
                        cpus=cpus,
                        pids_limit=pids_limit,
                        labels=self.labels(step_id),
                        environment={"HOME": "/workspace", "PYTHONUNBUFFERED": "1"},
                    ),
                )
                container.start()
            except APIError as exc:
                raise SandboxError(
                    f"could not start the sandbox: {exc.explanation or exc}"
                ) from None
            reason = "ok"
            try:
                status = container.wait(timeout=timeout_s)
                exit_code: int | None = int(status.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                reason = "timeout"
                exit_code = None
                container.kill()
                container.wait(timeout=30)
            seconds = time.monotonic() - started
            container.reload()
            state = container.attrs.get("State", {})
            if reason != "timeout":
                if state.get("OOMKilled"):
                    reason = "oom"
                elif exit_code == 137:
                    reason = "killed"
                elif exit_code != 0:
                    reason = "error"
            stdout = _decode(container.logs(stdout=True, stderr=False))
            stderr = _decode(container.logs(stdout=False, stderr=True))
            if reason == "timeout":
                stderr += (
                    f"\n[wflo] timeout: the cell ran longer than {timeout_s:g} s and was killed\n"
                )
            elif reason == "oom":
                stderr += (
                    f"\n[wflo] memory limit {format_size(memory_bytes)} exceeded (OOM-killed)\n"
                )
            return SandboxRun(exit_code, reason, stdout, stderr, seconds, container.id or "")
        finally:
            if container is not None:
                with contextlib.suppress(NotFound, APIError):
                    container.remove(force=True)

    def leftover_containers(self) -> list[str]:
        """Ids of this session's containers that still exist (should be none)."""
        found = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_PREFIX}.session={self.session_id}"}
        )
        return [c.id or "" for c in found]
