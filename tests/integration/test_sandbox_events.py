"""A Docker sandbox tells its watcher (``SandboxSession.on_change``) each change of its
life, with the details the ``sandbox.*`` events carry: started, stopped (idle, restart,
close), killed (a stuck cell; a container removed from outside) and OOM. The session
layer turns these into events (``session.events``); the sandbox package knows no ledger.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import docker
import pytest

from tests.sandboxes import MB, ok
from wflo_jupyter.events.schemas import EventSchemas
from wflo_jupyter.sandbox.docker_engine import LABEL_PREFIX
from wflo_jupyter.sandbox.session import SandboxLimits, SandboxSession
from wflo_jupyter.session.events import SessionEvents
from wflo_jupyter.session.sandboxes import KernelSandboxes

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture
def backend() -> str:
    """``make_session`` (``conftest.py``) builds Docker sessions here."""
    return "docker"


STUBBORN = """
import time
while True:
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        pass
"""


def watched(session: SandboxSession) -> list[tuple[str, dict[str, Any]]]:
    told: list[tuple[str, dict[str, Any]]] = []
    session.on_change = lambda what, details: told.append((what, details))
    return told


def test_start_restart_idle_stop_and_close_are_told(make_session: Any) -> None:
    session = make_session(limits=SandboxLimits(memory_bytes=256 * MB, cpus=0.5))
    told = watched(session)
    first = ok(session, "x = 1").container_id
    session.restart()
    second = session.container_id
    assert session.stop_if_idle(0.0)
    third = ok(session, "y = 2").container_id
    session.close()
    assert [(w, d.get("reason"), d["sandbox_id"]) for w, d in told] == [
        ("started", None, first),
        ("stopped", "restart", first),
        ("started", None, second),
        ("stopped", "idle", second),
        ("started", None, third),
        ("stopped", "close", third),
    ]
    started = told[0][1]
    assert started == {
        "sandbox_id": first,
        "image": session.image,
        "role": "session",
        "isolation": "docker",
        "memory_bytes": 256 * MB,
        "cpus": 0.5,
        "pids_limit": 128,
    }
    assert len({first, second, third}) == 3


def test_oom_and_a_stuck_cell_and_a_removed_container_are_told(
    make_session: Any, docker_client: docker.DockerClient
) -> None:
    session = make_session(limits=SandboxLimits(memory_bytes=128 * MB), interrupt_grace_s=1.0)
    told = watched(session)
    oom = session.execute("blob = bytearray(600 * 1024 * 1024)")
    assert oom.exit_reason == "oom"
    stuck = session.execute(STUBBORN, timeout_s=1.0)
    assert stuck.exit_reason == "timeout" and stuck.state_lost
    gone = ok(session, "z = 3").container_id
    assert gone is not None
    docker_client.containers.get(gone).remove(force=True)  # killed from outside
    after = session.execute("print('z' in dir())")
    assert after.stdout == "False\n"
    assert [(w, d.get("reason"), d.get("during_cell")) for w, d in told] == [
        ("started", None, None),
        ("oom", None, True),
        ("started", None, None),
        ("killed", "stuck", True),
        ("started", None, None),
        ("killed", "exited", False),
        ("started", None, None),
    ]
    assert told[1][1]["memory_bytes"] == 128 * MB
    assert told[1][1]["sandbox_id"] == oom.container_id
    assert told[5][1]["sandbox_id"] == gone


def test_session_events_wait_for_a_ledger_and_validate(make_session: Any) -> None:
    """What ``SessionEvents`` makes of the told changes are valid ``sandbox.*`` events of
    the session (written once a ledger is attached: here none is, so they wait)."""
    session = make_session()
    events = SessionEvents(session.session_id)
    session.on_change = events.sandbox_changed
    ok(session, "x = 1")
    session.restart()
    assert events.flush() is False  # no ledger yet: nothing written, nothing lost
    pending = list(events._pending)
    assert [e.type for e in pending] == ["sandbox.started", "sandbox.stopped", "sandbox.started"]
    schemas = EventSchemas()
    for event in pending:
        body = event.envelope()
        assert (body["session"], body["key"], body["version"]) == (session.session_id,) * 2 + (1,)
        assert event.topic == "wflo.sandbox"
        schemas.validate(body)


def test_a_dead_kernels_container_reaped_by_the_session_is_told(
    runtime_image: str, docker_client: docker.DockerClient
) -> None:
    """``KernelSandboxes`` reaps once, when it first connects to Docker, and tells each
    removed container (another kernel on this host may reap it first: it looks then)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    leftover = docker_client.containers.create(  # never started
        runtime_image,
        command=["true"],
        labels={
            f"{LABEL_PREFIX}.kernel-pid": str(gone.pid),
            f"{LABEL_PREFIX}.hostname": socket.gethostname(),
            f"{LABEL_PREFIX}.session": "a-dead-kernel",
        },
    )
    told: list[tuple[str, dict[str, Any]]] = []
    sandboxes = KernelSandboxes(
        "reaping",
        isolation="docker",
        docker_host=None,
        idle_timeout_s=60,
        on_change=lambda what, details: told.append((what, details)),
    )
    try:
        sandboxes.docker_client()
        sandboxes.docker_client()  # once per session
    finally:
        sandboxes.close()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(leftover.id or "")
    assert ("reaped", {"sandbox_id": leftover.id}) in told
    assert {what for what, _ in told} == {"reaped"}
