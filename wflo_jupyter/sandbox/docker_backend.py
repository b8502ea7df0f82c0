"""The Docker isolation backend: each agent in a hardened container of the runtime image.

``DockerLauncher`` creates the container with ``docker_engine.hardened_options`` (no
network, uid 1000, read-only root, no capabilities, limits), plus ``--init`` and two
read-only binds: the agent's code at ``AGENT_MOUNT`` and the socket directory at
``SOCKET_MOUNT``. ``DockerAgent`` asks the engine for the exit code and an OOM kill, and
changes limits in place.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.backend import AgentHandle, AgentLauncher
from wflo_jupyter.sandbox.docker_engine import check_image, hardened_options
from wflo_jupyter.sandbox.types import AGENT_MOUNT, SOCKET_MOUNT, LaunchRequest, SandboxLimits


class DockerAgent(AgentHandle):
    """The agent in a hardened Docker container."""

    def __init__(self, client: docker.DockerClient, container: Container) -> None:
        self.client = client
        self.container = container

    @property
    def id(self) -> str:
        return self.container.id or ""

    def poll(self) -> int | None:
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            return int(self.container.attrs.get("State", {}).get("ExitCode", -1))
        return None

    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        code: int | None
        try:
            status = self.container.wait(timeout=timeout_s)
            code = int(status.get("StatusCode", -1))
        except (requests.exceptions.RequestException, APIError, NotFound):
            code = None
            self.kill()
        oom = False
        with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
            self.container.reload()
            oom = bool(self.container.attrs.get("State", {}).get("OOMKilled"))
        return code, oom

    def kill(self) -> None:
        with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
            self.container.kill()

    def destroy(self) -> None:
        with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
            self.container.remove(force=True)

    def apply_limits(self, limits: SandboxLimits) -> str | None:
        api = cast(Any, self.client.api)
        data = {
            "Memory": limits.memory_bytes,
            "MemorySwap": limits.memory_bytes,
            "NanoCpus": int(limits.cpus * 1e9),
            "PidsLimit": limits.pids_limit,
        }
        try:
            response = api._post_json(api._url("/containers/{0}/update", self.id), data=data)
            api._raise_for_status(response)
        except (APIError, requests.exceptions.RequestException) as exc:
            explanation = getattr(exc, "explanation", None) or str(exc)
            return " ".join(explanation.split())
        return None

    def logs_tail(self) -> str:
        try:
            return self.container.logs(tail=5).decode("utf-8", "replace")
        except (APIError, NotFound, requests.exceptions.RequestException):
            return ""


class DockerLauncher(AgentLauncher):
    """Session containers on a Docker engine (the default, strongest isolation)."""

    isolation = "docker"

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    def prepare(self, image: str) -> None:
        check_image(self.client, image)

    def launch(self, request: LaunchRequest) -> AgentHandle:
        limits = request.limits
        options = hardened_options(
            memory_bytes=limits.memory_bytes,
            cpus=limits.cpus,
            pids_limit=limits.pids_limit,
            labels=request.labels,
            environment=request.environment,
            workspace_size=limits.workspace_size,
            tmp_size=limits.tmp_size,
        )
        container: Container | None = None
        try:
            container = self.client.containers.create(
                request.image,
                [
                    "python3",
                    "-I",
                    f"{AGENT_MOUNT}/agent.py",
                    f"{SOCKET_MOUNT}/{request.socket_name}",
                ],
                detach=True,
                init=True,
                volumes={
                    str(request.agent_dir): {"bind": AGENT_MOUNT, "mode": "ro"},
                    str(request.sock_dir): {"bind": SOCKET_MOUNT, "mode": "ro"},
                },
                **options,
            )
            container.start()
            return DockerAgent(self.client, container)
        except APIError as exc:
            self._remove(container)
            raise SandboxError(
                f"could not start the sandbox: {' '.join(str(exc.explanation or exc).split())}"
            ) from None
        except (DockerException, requests.exceptions.RequestException) as exc:
            self._remove(container)
            raise SandboxError(
                f"could not start the sandbox: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            self._remove(container)
            raise

    @staticmethod
    def _remove(container: Container | None) -> None:
        if container is not None:  # failed half way: never leak it
            with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
                container.remove(force=True)


__all__ = ["DockerAgent", "DockerLauncher"]
