"""The doctor's look at the sandbox: does a Docker engine answer (and which version), does
the bubblewrap fallback work here, and is the runtime image built and current."""

from __future__ import annotations

import os

import docker
import requests
from docker.errors import DockerException, ImageNotFound

from wflo_jupyter.core.doctor_rules import BwrapSeen, DockerSeen, ImageSeen
from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.runtime import recipe
from wflo_jupyter.sandbox.bwrap import find_bwrap, probe_bubblewrap


def docker_address(docker_host: str | None) -> str:
    return docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def probe_docker(
    docker_host: str | None, timeout_s: float
) -> tuple[DockerSeen, docker.DockerClient | None]:
    """What the engine at ``docker_host`` (default ``DOCKER_HOST``) answers, and a client
    to it when it did (the caller closes it)."""
    address = docker_address(docker_host)
    client: docker.DockerClient | None = None
    try:
        seconds = max(1, round(timeout_s))
        client = (
            docker.DockerClient(base_url=docker_host, timeout=seconds)
            if docker_host
            else docker.from_env(timeout=seconds)
        )
        version = client.version()
        seen = DockerSeen(address, str(version.get("Version")), str(version.get("ApiVersion")))
        return seen, client
    except (DockerException, requests.RequestException, OSError) as exc:
        if client is not None:
            client.close()
        return DockerSeen(address, error=_reason(exc)), None


_KNOWN = (
    ("FileNotFoundError", "no such socket"),
    ("Connection refused", "connection refused"),
    ("Permission denied", "permission denied"),
    ("timed out", "timed out"),
)


def _reason(exc: BaseException) -> str:
    """The engine's failure in a few words (the SDK nests the cause in its message)."""
    for needle, said in _KNOWN:
        if needle in str(exc):
            return said
    text = str(exc).strip().splitlines()
    detail = text[-1][:160] if text else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def probe_bwrap() -> BwrapSeen:
    """Whether bubblewrap runs the sandbox here (``probe_bubblewrap`` runs ``python3`` in
    the real sandbox layout once per process)."""
    if find_bwrap() is None:
        return BwrapSeen(False, "bwrap is not installed", installed=False)
    try:
        support = probe_bubblewrap()
    except WfloError as exc:
        return BwrapSeen(False, str(exc))
    return BwrapSeen(True, support.mode)


def probe_image(client: docker.DockerClient, image: str) -> ImageSeen:
    """The runtime image: present? built from which recipe and base? what is the recipe's
    hash now, on the same base?"""
    try:
        found = client.images.get(image)
    except ImageNotFound:
        return ImageSeen(image, present=False)
    except (DockerException, requests.RequestException) as exc:
        return ImageSeen(image, present=False, error=_reason(exc))
    labels = found.labels or {}
    base, label_hash = labels.get(recipe.BASE_LABEL), labels.get(recipe.RECIPE_LABEL)
    base_id = None
    if base:
        try:
            base_id = client.images.get(base).id
        except ImageNotFound:
            base_id = None
    directory = recipe.recipe_dir()
    present = (directory / "Dockerfile").is_file()
    now = recipe.current_hash(directory, base, base_id) if present and base and base_id else None
    if present and now is None:
        now = ""  # the recipe is here, the base is not: stale, not unknown
    return ImageSeen(
        image,
        present=True,
        label_hash=label_hash,
        base=base,
        base_present=base_id is not None,
        recipe_hash=now,
    )


__all__ = ["docker_address", "probe_bwrap", "probe_docker", "probe_image"]
