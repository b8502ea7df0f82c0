"""A sandbox that dies between cells is replaced, and the next cell works; a cell that
killed its own sandbox is never run a second time.

The agent acknowledges each cell (``accepted``) before the cell can start. A channel
that ends without that acknowledgement means the cell never ran, so the session starts a
new sandbox and runs it there. Without it, a cell sent in the moment between the agent's
death and its socket closing failed with ``SandboxDied``
(``test_killing_bwrap_tears_down_everything_inside``, seen failing under load)."""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.helpers import cpu_hogs, stop_processes, wait_until
from wflo_jupyter.sandbox.agent import AGENT_DIR
from wflo_jupyter.sandbox.bwrap import BubblewrapLauncher, probe_bubblewrap
from wflo_jupyter.sandbox.isolation import UnisolatedLauncher
from wflo_jupyter.sandbox.session import ExecResult, SandboxSession

pytestmark = [pytest.mark.integration, pytest.mark.security]

KILLS = 20
STATE_LOST = "this cell runs in a new sandbox, state from earlier cells was lost"

# Runs the real agent, but dies on receiving the next ``exec`` frame, before accepting
# it, when the file ``die-on-next-exec`` is beside it: a sandbox that died between cells
# while its socket still looked open.
DYING_AGENT = """\
import importlib.util, os, sys
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("real_agent", os.path.join(here, "real_agent.py"))
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
receive = agent.protocol.recv_frame
flag = os.path.join(here, "die-on-next-exec")

def recv_frame(*args, **kwargs):
    frame = receive(*args, **kwargs)
    if frame.get("type") == "exec" and os.path.exists(flag):
        os.remove(flag)
        os._exit(9)
    return frame

agent.protocol.recv_frame = recv_frame
agent.main(sys.argv)
"""


def ok(session: SandboxSession, code: str) -> ExecResult:
    result = session.execute(code, timeout_s=60)
    assert result.ok, result.error_line + "\n" + result.traceback
    return result


@pytest.fixture
def dying_agent_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "agent"
    directory.mkdir()
    for source in AGENT_DIR.glob("*.py"):
        shutil.copyfile(source, directory / source.name)
    (directory / "agent.py").rename(directory / "real_agent.py")
    (directory / "agent.py").write_text(DYING_AGENT)
    return directory


@pytest.fixture
def host_session(dying_agent_dir: Path) -> Iterator[SandboxSession]:
    session = SandboxSession(
        None,
        f"test-death-{uuid.uuid4().hex[:8]}",
        launcher=UnisolatedLauncher(),
        agent_dir=dying_agent_dir,
    )
    yield session
    session.close()


def test_a_sandbox_that_died_before_taking_the_cell_is_replaced_and_the_cell_runs(
    host_session: SandboxSession, dying_agent_dir: Path
) -> None:
    first = ok(host_session, "x = 41")
    (dying_agent_dir / "die-on-next-exec").touch()
    second = host_session.execute("print('x' in dir())", timeout_s=60)
    assert second.ok, second.error_line
    assert second.stdout == "False\n"  # a new sandbox: x is gone, and the user is told
    assert second.state_lost
    assert second.container_id != first.container_id
    assert any(STATE_LOST in n and "exit code 9" in n for n in second.notices), second.notices
    assert not (dying_agent_dir / "die-on-next-exec").exists()
    assert ok(host_session, "y = 1; y").container_id == second.container_id


def test_a_cell_that_kills_its_own_sandbox_is_not_run_again(
    host_session: SandboxSession, tmp_path: Path
) -> None:
    """Twenty times: a cell that kills its agent at once is reported, and ran once. (The
    agent writes ``accepted`` before the cell starts; when it was only queued, a quick
    enough ``os._exit`` passed for a cell that never ran, which then ran again.)"""
    for round_ in range(20):
        runs = tmp_path / f"runs-{round_}"
        ok(host_session, "x = 1")
        killer = f"open({str(runs)!r}, 'a').write('ran\\n')\nimport os\nos._exit(9)"
        result = host_session.execute(killer, timeout_s=60)
        assert not result.ok
        assert result.ename == "SandboxDied", (round_, result.error_line)
        assert "exit code 9" in result.evalue
        assert runs.read_text() == "ran\n", round_  # once: it ran, so it was not retried
    assert ok(host_session, "print('next')").stdout == "next\n"


# -- twenty kills in a row, idle and under a CPU hog ------------------------------------


def _bwrap_session() -> tuple[SandboxSession, Callable[[SandboxSession], None]]:
    try:
        probe_bubblewrap()
    except Exception as exc:
        pytest.fail(f"bubblewrap is needed for this test: {exc}")

    def kill(session: SandboxSession) -> None:
        """SIGKILL the outer bwrap, then wait until no process of the sandbox is left (the
        agent's process may still hold its socket for a moment after that)."""
        box_pid = int((session.container_id or "").removeprefix("bwrap-"))
        handle = session._box.handle if session._box is not None else None
        agent_pid = handle._agent_pid() if handle is not None else None
        assert agent_pid is not None
        os.kill(box_pid, signal.SIGKILL)
        wait_until(lambda: not _running(agent_pid), 10, what=f"agent pid {agent_pid} to end")

    session = SandboxSession(
        None, f"test-kill-{uuid.uuid4().hex[:8]}", launcher=BubblewrapLauncher()
    )
    return session, kill


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _docker_session(
    client: docker.DockerClient, image: str
) -> tuple[SandboxSession, Callable[[SandboxSession], None]]:
    def kill(session: SandboxSession) -> None:
        container = client.containers.get(session.container_id or "")
        container.kill()

        def ended() -> bool:
            container.reload()
            return container.status in ("exited", "dead")

        wait_until(ended, 30, what=f"container {container.short_id} to exit")

    session = SandboxSession(client, f"test-kill-{uuid.uuid4().hex[:8]}", image=image)
    return session, kill


@pytest.fixture(params=["idle", "cpu-hog"])
def load(request: pytest.FixtureRequest) -> Iterator[str]:
    hogs = cpu_hogs(os.cpu_count() or 2) if request.param == "cpu-hog" else []
    yield request.param
    stop_processes(hogs)


@pytest.mark.parametrize(
    "backend", ["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)]
)
def test_twenty_kills_each_followed_by_a_cell_that_works(
    backend: str, load: str, request: pytest.FixtureRequest
) -> None:
    if backend == "docker":
        client = request.getfixturevalue("docker_client")
        session, kill = _docker_session(client, request.getfixturevalue("runtime_image"))
    else:
        session, kill = _bwrap_session()
    seen: set[str] = set()
    try:
        for round_ in range(KILLS):
            before = ok(session, f"x = {round_}")
            kill(session)
            after = session.execute("print('x' in dir())", timeout_s=60)
            assert after.ok, f"round {round_} ({load}): {after.error_line}"
            assert after.stdout == "False\n"
            assert after.state_lost
            assert any(STATE_LOST in n for n in after.notices), after.notices
            assert after.container_id != before.container_id
            seen |= {before.container_id or "", after.container_id or ""}
    finally:
        session.close()
    assert len(seen) == KILLS + 1  # a new sandbox after every kill
