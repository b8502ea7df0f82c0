"""The sandbox runtime image (runtimes/python3.11) as the sandbox runs it.

Needs a Docker engine and the image built by scripts/build-runtime-image.sh.
Fixtures (from the suite's conftest): ``docker_client`` (docker.DockerClient)
and ``runtime_image`` (the image tag, e.g. ``wflo-runtime:python3.11``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import docker
import docker.errors
import pytest
from docker.models.containers import Container

pytestmark = [pytest.mark.integration, pytest.mark.docker]

# The isolation the sandbox runner applies (DESIGN: network off, non-root,
# read-only root, writable /workspace on a tmpfs owned by uid 1000).
SANDBOX_OPTIONS: Final[dict[str, Any]] = {
    "network_mode": "none",
    "read_only": True,
    "tmpfs": {"/workspace": "size=64m,uid=1000,gid=1000"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}
RUN_TIMEOUT_S: Final[int] = 60


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: str
    stderr: str


def run_python(client: docker.DockerClient, image: str, code: str) -> RunResult:
    """Run ``python3 -c code`` in a sandboxed container; always remove it."""
    container: Container = client.containers.create(
        image, command=["python3", "-c", code], **SANDBOX_OPTIONS
    )
    try:
        container.start()
        status = container.wait(timeout=RUN_TIMEOUT_S)
        stdout: bytes = container.logs(stdout=True, stderr=False)
        stderr: bytes = container.logs(stdout=False, stderr=True)
        return RunResult(
            exit_code=int(status["StatusCode"]),
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )
    finally:
        container.remove(force=True)


def run_json(client: docker.DockerClient, image: str, code: str) -> dict[str, Any]:
    """Run code that prints one JSON object; return it (fail on non-zero exit)."""
    result = run_python(client, image, code)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


# Python run inside the container: try to write a file, report what happened.
TRY_WRITE: Final[str] = """
import errno, json, os, sys
path = sys.argv[1] if len(sys.argv) > 1 else PATH
try:
    with open(path, "w") as f:
        f.write("wflo")
    with open(path) as f:
        back = f.read()
    st = os.stat(path)
    print(json.dumps({"ok": True, "read_back": back, "owner": st.st_uid}))
except OSError as e:
    print(json.dumps({"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}))
"""


def try_write(client: docker.DockerClient, image: str, path: str) -> dict[str, Any]:
    return run_json(client, image, f"PATH = {path!r}\n{TRY_WRITE}")


def test_image_exists_with_labels(docker_client: docker.DockerClient, runtime_image: str) -> None:
    try:
        image = docker_client.images.get(runtime_image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{runtime_image} is missing: run scripts/build-runtime-image.sh")
    config: dict[str, Any] = image.attrs["Config"]
    labels: dict[str, str] = config.get("Labels") or {}
    assert labels.get("org.wflo.runtime") == "python3.11"
    assert re.fullmatch(r"[0-9a-f]{64}", labels.get("org.wflo.recipe-hash", "")), labels
    assert config.get("User") == "1000"
    assert config.get("WorkingDir") == "/workspace"
    env: list[str] = config.get("Env") or []
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_runs_python311_as_uid_1000_in_workspace(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    info = run_json(
        docker_client,
        runtime_image,
        "import json, os, sys; print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), "
        "'cwd': os.getcwd(), 'version': list(sys.version_info[:2]), "
        "'home': os.environ.get('HOME')}))",
    )
    assert info["uid"] == 1000
    assert info["gid"] == 1000
    assert info["cwd"] == "/workspace"
    assert info["version"] == [3, 11]
    assert info["home"] == "/home/sandbox"


def test_cannot_write_etc(docker_client: docker.DockerClient, runtime_image: str) -> None:
    outcome = try_write(docker_client, runtime_image, "/etc/wflo-probe")
    assert outcome["ok"] is False
    assert outcome["errno"] in {"EROFS", "EACCES"}


def test_root_filesystem_is_read_only(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    # /tmp is world-writable in the image, so only the read-only root stops this.
    outcome = try_write(docker_client, runtime_image, "/tmp/wflo-probe")
    assert outcome == {"ok": False, "errno": "EROFS"}


def test_can_write_workspace(docker_client: docker.DockerClient, runtime_image: str) -> None:
    outcome = try_write(docker_client, runtime_image, "/workspace/wflo-probe.txt")
    assert outcome == {"ok": True, "read_back": "wflo", "owner": 1000}


def test_has_no_network(docker_client: docker.DockerClient, runtime_image: str) -> None:
    info = run_json(
        docker_client,
        runtime_image,
        "import json, socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=3).close()\n"
        "    print(json.dumps({'connected': True}))\n"
        "except OSError as e:\n"
        "    print(json.dumps({'connected': False, 'error': type(e).__name__}))\n",
    )
    assert info["connected"] is False
