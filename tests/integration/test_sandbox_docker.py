"""``SandboxSession`` on the Docker backend: what only Docker does. The hardened session
container (identity, capabilities, environment, read-only paths, ``/.dockerenv``, labels),
OOM kills, limits changed in place through the engine, a missing image or a container that
cannot be created, and reaping dead kernels' containers. The behaviour every backend shares
is in ``test_sandbox_behaviour.py``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import docker
import pytest

from tests.sandboxes import MB, ok, session_containers
from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.session import (
    SandboxLimits,
    SandboxSession,
    default_socket_base,
    reap_orphans,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture
def backend() -> str:
    """``make_session`` (``conftest.py``) builds Docker sessions here."""
    return "docker"


# limits and death ----------------------------------------------------------------------


def test_oom_is_reported_and_the_next_cell_gets_a_new_container(make_session: Any) -> None:
    session = make_session(limits=SandboxLimits(memory_bytes=128 * MB))
    ok(session, "x = 1")
    result = session.execute("blob = bytearray(600 * 1024 * 1024)\nprint(len(blob))")
    assert result.exit_reason == "oom"
    assert result.state_lost
    assert "memory limit 128m exceeded (OOM-killed)" in result.evalue
    after = session.execute("print('x' in dir())")
    assert after.stdout == "False\n"
    assert after.container_id != result.container_id


def test_limits_change_in_place(
    session: SandboxSession, docker_client: docker.DockerClient
) -> None:
    first = ok(session, "x = 1")
    changed = SandboxLimits(memory_bytes=256 * MB, cpus=0.5, pids_limit=64)
    second = ok(session, "x + 1", limits=changed)
    assert second.container_id == first.container_id
    host_config = docker_client.containers.get(second.container_id).attrs["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["PidsLimit"]) == (
        256 * MB,
        500_000_000,
        64,
    )


# hardening -----------------------------------------------------------------------------


def test_hardening_of_the_session_container(
    session: SandboxSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    code = (
        "import os, socket\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l)\n"
        "print(os.getuid(), os.getgid(), os.getcwd())\n"
        "print(status['CapEff'].strip(), status['NoNewPrivs'].strip())\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "print(sorted(os.environ))\n"
        "print(os.listdir('/run/wflo'))\n"
        "for path in ('/run/wflo/x', '/opt/wflo-agent/x', '/usr/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('wrote', path)\n"
        "    except OSError:\n"
        "        print('denied')\n"
    )
    lines = ok(session, code).stdout.splitlines()
    assert lines[0] == "1000 1000 /workspace"
    assert lines[1] == "0000000000000000 1"
    assert lines[2] == "['lo']"
    env = eval(lines[3])  # a printed list of names
    # The provider variables the agent sets point at its loopback proxy and hold the
    # per-session sandbox token, never the host's key.
    assert "WFLO_AGENT_TOKEN" not in env
    keys = ok(
        session,
        "import os\nprint(os.environ['OPENAI_API_KEY'], os.environ['ANTHROPIC_API_KEY'])\n"
        "print(b'sk-host-secret' in open('/proc/self/environ', 'rb').read())",
    ).stdout.split()
    assert keys[0] == keys[1] and keys[0].startswith("wflo-sandbox-")
    assert keys[2] == "False"
    assert set(env) <= {
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "HOME",
        "PATH",
        "LANG",
        "PYTHONUNBUFFERED",
        "MPLBACKEND",
        "MPLCONFIGDIR",
        "PYTHONDONTWRITEBYTECODE",
        "HOSTNAME",
    }
    assert lines[4] == "[]"  # the socket is unlinked once the agent connected
    assert lines[5:] == ["denied", "denied", "denied"]


# Moved from the retired one-shot DockerSandbox's tests (tests/integration/test_sandbox.py):
# the hardening and engine checks no other test made on the session container.


def test_runs_as_sandbox_user_in_a_docker_container(session: SandboxSession) -> None:
    code = (
        "import os, pathlib; "
        "print(os.getuid(), os.getgid(), os.getcwd(), pathlib.Path('/.dockerenv').exists())"
    )
    assert ok(session, code).stdout.split() == ["1000", "1000", "/workspace", "True"]


def test_labels(session: SandboxSession, docker_client: docker.DockerClient) -> None:
    session.start()
    labels = docker_client.containers.get(session.container_id).labels
    assert labels["org.wflo.session"] == session.session_id
    assert labels["org.wflo.kernel-pid"] == str(os.getpid())
    assert labels["org.wflo.role"] == "session"
    assert "org.wflo.created" in labels


# lifecycle -----------------------------------------------------------------------------


def test_missing_image_is_one_line(make_session: Any, docker_client: docker.DockerClient) -> None:
    session = make_session(image="wflo-missing:none")
    with pytest.raises(SandboxError, match=r"^sandbox image 'wflo-missing:none' not found; build"):
        session.execute("print(1)")
    assert session_containers(docker_client, session.session_id) == []


def test_failed_creation_leaks_nothing(
    make_session: Any, docker_client: docker.DockerClient
) -> None:
    session = make_session(limits=SandboxLimits(cpus=10_000))
    with pytest.raises(SandboxError, match="could not start the sandbox"):
        session.start()
    assert session_containers(docker_client, session.session_id) == []


def test_reaper_removes_orphans_of_dead_kernels(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    session_id = f"test-reap-{uuid.uuid4().hex[:8]}"
    created: list[Any] = []
    try:
        for pid in (dead.pid, os.getppid()):
            created.append(
                docker_client.containers.create(
                    runtime_image,
                    ["python3", "-c", "import time; time.sleep(60)"],
                    labels={
                        "org.wflo.session": session_id,
                        "org.wflo.kernel-pid": str(pid),
                        "org.wflo.created": datetime.now(UTC).isoformat(timespec="seconds"),
                        "org.wflo.role": "session",
                    },
                    network_mode="none",
                )
            )
        orphan, alive = created
        orphan.start()
        removed = reap_orphans(docker_client)
        assert orphan.id in removed
        assert alive.id not in removed
        remaining = {c.id for c in session_containers(docker_client, session_id)}
        assert remaining == {alive.id}
    finally:
        for container in created:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_a_dead_kernels_container_stops_itself_and_is_reaped(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    session_id = f"test-kernel-{uuid.uuid4().hex[:8]}"
    script = (
        "import sys, time, docker\n"
        "from wflo_jupyter.sandbox.session import SandboxSession\n"
        f"s = SandboxSession(docker.from_env(), {session_id!r}, image={runtime_image!r})\n"
        "s.start()\n"
        "print(s.container_id, flush=True)\n"
        "time.sleep(120)\n"
    )
    kernel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout is not None
        container_id = kernel.stdout.readline().strip()
        assert container_id
    finally:
        kernel.kill()
        kernel.wait()
    container = docker_client.containers.get(container_id)
    # The agent sees its channel close and exits: no orphan keeps running.
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert container_id in reap_orphans(docker_client)
    assert session_containers(docker_client, session_id) == []
    base = default_socket_base()
    assert not [p for p in base.iterdir() if p.name.startswith(f"s{kernel.pid}-")]
