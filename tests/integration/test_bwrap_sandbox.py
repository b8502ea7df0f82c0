"""What only bubblewrap (``WFLO_ISOLATION=bubblewrap``) does, the explicit ``unisolated``
mode's own rules, and ``choose_isolation``: the sandbox survives the thread that started
it, its identity and namespaces, what of the host it cannot see, memory by cgroup or
rlimit, limits changed in place, the root fallback, choosing the isolation, killing bwrap
and a dead kernel's sandbox. The behaviour every backend shares is in
``test_sandbox_behaviour.py``.

Bubblewrap is selected explicitly here, so these tests run (and must pass) on a machine
with a Docker engine as well as on one without. They need ``bwrap`` and the system
``/usr/bin/python3`` (the interpreter the sandbox runs)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.sandboxes import (
    MB,
    leftover_cgroups,
    ok,
    proc_table,
    processes_with,
    sandbox_processes,
    text_plain,
    unique_sleep,
    weaker_notice,
)
from wflo_jupyter.core.errors import ConfigError, EngineUnavailable, SandboxError
from wflo_jupyter.sandbox.bwrap import BubblewrapLauncher, reap_bubblewrap_leftovers
from wflo_jupyter.sandbox.isolation import (
    NO_ISOLATION,
    UNISOLATED_NOTICE,
    UnisolatedLauncher,
    choose_isolation,
    docker_answers,
    open_sandbox_session,
)
from wflo_jupyter.sandbox.session import SandboxLimits, SandboxSession

pytestmark = [pytest.mark.integration, pytest.mark.security]

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_SECRET = "sk-host-secret-" + uuid.uuid4().hex
BOGUS_DOCKER = "unix:///nonexistent/wflo-test/docker.sock"


@pytest.fixture
def backend() -> str:
    """``make_session`` (``conftest.py``) builds bubblewrap sessions here."""
    return "bubblewrap"


# -- the sandbox outlives the thread that started it ------------------------------------


def test_started_from_a_short_lived_thread_survives_it(session: SandboxSession) -> None:
    """``--die-with-parent`` is tied to the forking thread; the pre-warm thread ends."""
    warm = threading.Thread(target=session.start)
    warm.start()
    warm.join()
    warmed = session.container_id
    # A bounded negative check: a sandbox tied to the ended thread would be killed by now.
    time.sleep(0.5)
    result = ok(session, "print('still here')")
    assert result.stdout == "still here\n"
    assert result.container_id == warmed  # the pre-warmed sandbox, not a replacement


# -- containment ------------------------------------------------------------------------


def test_identity_and_namespaces(session: SandboxSession, bwrap_ready: str) -> None:
    code = (
        "import ctypes, os, socket\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read()"
        ".splitlines() if ':\\t' in l)\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), socket.gethostname())\n"
        "print(status['CapEff'].strip(), status['NoNewPrivs'].strip())\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000), ctypes.get_errno() != 0)\n"  # CLONE_NEWUSER
        "import pwd; print(pwd.getpwuid(1000).pw_name)\n"
    )
    lines = ok(session, code).stdout.splitlines()
    assert lines[0] == "1000 1000 [] /workspace wflo-sandbox"
    assert lines[1] == "0000000000000000 1"
    assert lines[2] == "['lo']"
    assert len(eval(lines[3])) <= 3  # bwrap's init, the agent (+ the listing's own)
    assert lines[4] == "-1 True"  # no nested user namespaces
    assert lines[5] == "wflo"
    if bwrap_ready == "drop":  # root on the host: the sandbox is uid 1000 there as well
        pids = sandbox_processes()  # bwrap, its init in the namespace, the agent
        assert len(pids) >= 3
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
            assert uids == ["1000"] * 4, (pid, uids)


def test_host_secrets_never_reach_the_sandbox(
    make_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", HOST_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", HOST_SECRET)
    session = make_session()
    code = (
        "import os\n"
        f"secret = {HOST_SECRET!r}\n"
        "print(secret in repr(dict(os.environ)))\n"
        "readable = []\n"
        "for pid in (p for p in os.listdir('/proc') if p.isdigit()):\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            data = open(f'/proc/{pid}/{name}', 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        readable.append(f'{pid}/{name}')\n"
        "        if secret.encode() in data:\n"
        "            print('LEAK', pid, name)\n"
        "print(sorted(readable))\n"
        "print(sorted(os.environ))\n"
    )
    lines = ok(session, code).stdout.splitlines()
    assert lines[0] == "False"
    assert not any(line.startswith("LEAK") for line in lines), lines
    assert "1/environ" in lines[1]  # bwrap's own pid 1 was readable, and clean
    env = eval(lines[2])
    assert "WFLO_AGENT_TOKEN" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) <= {
        "HOME",
        "PATH",
        "LANG",
        "PYTHONUNBUFFERED",
        "MPLBACKEND",
        "MPLCONFIGDIR",
        "PWD",
        "OPENAI_API_KEY",  # the agent's per-session token for its loopback proxy
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
    }
    for pid in sandbox_processes():  # the host side: bwrap and the agent are clean too
        with contextlib.suppress(OSError):
            assert HOST_SECRET.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
            assert b"WFLO_AGENT_TOKEN" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_host_files_are_invisible(session: SandboxSession) -> None:
    code = (
        "import os\n"
        f"for path in ('/root', '/home', '/var', '/srv', '/mnt', {str(REPO_ROOT)!r},\n"
        "             '/etc/shadow', '/etc/ssh', '/var/run/docker.sock', '/run/docker.sock',\n"
        f"             {str(Path.home())!r}, '/sys/fs/cgroup'):\n"
        "    print(path, os.path.exists(path))\n"
        "print(sorted(os.listdir('/')))\n"
        "print(open('/etc/passwd').read().count(chr(10)))\n"
    )
    lines = ok(session, code).stdout.splitlines()
    visible = [line for line in lines[:-2] if line.endswith("True")]
    assert visible == []
    assert set(eval(lines[-2])) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "opt",
        "proc",
        "run",
        "sbin",
        "tmp",
        "usr",
        "workspace",
    }
    assert lines[-1] == "3"  # the synthetic passwd: root, wflo, nobody


# -- limits -----------------------------------------------------------------------------


def test_memory_limit_with_cgroup_or_rlimit(make_session: Any) -> None:
    """With a writable cgroup the memory hog is OOM-killed as under Docker; without one,
    ``RLIMIT_AS`` turns it into a ``MemoryError`` that says which limit, state kept."""
    session = make_session(limits=SandboxLimits(memory_bytes=128 * MB))
    first = ok(session, "x = 1")
    cgroup_memory = "cgroup limits on memory" in weaker_notice(first)
    result = session.execute("blob = bytearray(900 * 1024 * 1024)\nprint(len(blob))")
    if cgroup_memory:
        assert result.exit_reason == "oom"
        assert result.state_lost
        assert "memory limit 128m exceeded (OOM-killed)" in result.evalue
        assert session.execute("print('x' in dir())").stdout == "False\n"
    else:
        assert result.ename == "MemoryError"
        assert "memory limit 128m was reached" in result.evalue
        assert text_plain(ok(session, "x")) == ["1"]


def test_memory_rlimit_without_cgroup(make_session: Any) -> None:
    session = make_session(
        BubblewrapLauncher(use_cgroup=False), limits=SandboxLimits(memory_bytes=128 * MB)
    )
    first = ok(session, "x = 1\nsmall = bytearray(64 * 1024 * 1024)")
    assert "no cgroup memory limit" in weaker_notice(first)
    result = session.execute("blob = bytearray(900 * 1024 * 1024)")
    assert (result.exit_reason, result.ename) == ("error", "MemoryError")
    assert result.evalue == (
        "the sandbox's memory limit 128m was reached (an address-space rlimit: "
        "no cgroup memory controller here); state is kept"
    )
    assert not result.state_lost
    assert text_plain(ok(session, "x")) == ["1"]


def _cgroup_values(directory: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in ("memory.max", "memory.limit_in_bytes", "pids.max", "cpu.max"):
        path = Path(directory, name)
        if path.exists():
            values[name] = path.read_text().strip()
    if Path(directory, "cpu.cfs_quota_us").exists():
        values["cpu.max"] = Path(directory, "cpu.cfs_quota_us").read_text().strip() + " 100000"
    return values


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup", "rlimits"])
def test_limits_change_in_place(make_session: Any, use_cgroup: bool) -> None:
    session = make_session(BubblewrapLauncher(use_cgroup=use_cgroup))
    first = ok(session, "x = 1")
    changed = SandboxLimits(memory_bytes=256 * MB, cpus=0.5, pids_limit=64)
    second = ok(
        session,
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0], "
        "resource.getrlimit(resource.RLIMIT_NPROC)[0])",
        limits=changed,
    )
    assert second.container_id == first.container_id
    assert not any("could not change" in n for n in second.notices), second.notices
    space, nproc = (int(v) for v in second.stdout.split())
    cgroups = leftover_cgroups()  # this session's only
    if "cgroup limits on memory" in weaker_notice(second):
        assert (space, nproc) == (-1, 64)  # memory is the cgroup's job: no RLIMIT_AS
        merged: dict[str, str] = {}
        for directory in cgroups:
            merged.update(_cgroup_values(directory))
        memory = merged.get("memory.max") or merged.get("memory.limit_in_bytes")
        assert memory == str(256 * MB)
        assert merged["pids.max"] == "64"
        assert merged["cpu.max"] == "50000 100000"
    else:
        assert not use_cgroup or cgroups == []
        assert (space, nproc) == (256 * MB + 512 * MB, 64)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root fallback exists for root only")
def test_root_fallback_without_unprivileged_user_namespaces(make_session: Any) -> None:
    """Root on a host where uid 1000 cannot create user namespaces: bwrap creates it as
    root; uid 1000 inside is root outside, without capabilities; the notice says so."""
    session = make_session(BubblewrapLauncher(mode="root"))
    result = ok(
        session,
        "import os\n"
        "print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "print(os.path.exists('/root'))",
    )
    assert result.stdout == "1000 0000000000000000\nFalse\n"
    assert "runs as host root without capabilities" in weaker_notice(result)


# -- unisolated and choosing ------------------------------------------------------------


def test_unisolated_runs_only_when_requested_and_keeps_host_keys_out(
    bwrap_ready: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an explicit ``unisolated`` gets it, without asking Docker; the cell's provider
    key is not the host's. (How its cells run, each labelled: ``test_sandbox_behaviour``.)"""
    monkeypatch.setenv("OPENAI_API_KEY", HOST_SECRET)
    assert choose_isolation("auto", BOGUS_DOCKER) == "bubblewrap"  # never "unisolated"
    assert choose_isolation("unisolated", BOGUS_DOCKER) == "unisolated"

    def no_docker() -> Any:
        raise AssertionError("unisolated must not ask for Docker")

    session = open_sandbox_session("unisolated", "test-host", "ignored:image", no_docker)
    try:
        assert isinstance(session.launcher, UnisolatedLauncher)
        first = ok(
            session,
            "x = 41\nimport os\nprint(os.environ['OPENAI_API_KEY'] != secret)",
            inputs={"secret": HOST_SECRET},
        )
        assert first.isolation == "unisolated"
        assert first.notices[0] == UNISOLATED_NOTICE
        assert first.stdout == "True\n"
    finally:
        session.close()


def test_choose_isolation_refuses_without_docker_or_bubblewrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(SandboxError) as refused:
        choose_isolation("auto", BOGUS_DOCKER)
    assert str(refused.value) == NO_ISOLATION
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(
        "no Docker engine answers and bubblewrap is not installed: start Docker (make docker)"
    )
    with pytest.raises(SandboxError, match=r"^no Docker engine answers and bubblewrap is not"):
        open_sandbox_session("auto", "s", "img", _no_engine, bwrap=str(tmp_path / "bwrap"))
    fake = tmp_path / "bwrap"  # installed, but user namespaces are not allowed here
    fake.write_text(
        "#!/bin/sh\n"
        "if [ \"$1\" = --help ]; then echo '    --args FD    Parse args from FD'; exit 0; fi\n"
        "echo 'bwrap: setting up uid map: Permission denied' >&2\n"
        "exit 1\n"
    )
    fake.chmod(stat.S_IRWXU)
    with pytest.raises(SandboxError) as broken:
        choose_isolation("auto", BOGUS_DOCKER, bwrap=str(fake))
    message = str(broken.value)
    assert message.startswith("no Docker engine answers and bubblewrap does not work here (")
    assert "setting up uid map: Permission denied" in message
    assert "WFLO_ISOLATION=unisolated" in message
    assert "\n" not in message
    # Explicit choices are returned as they are; a bad value is a one-line ConfigError.
    assert choose_isolation("BubbleWrap", BOGUS_DOCKER) == "bubblewrap"
    assert choose_isolation("docker", BOGUS_DOCKER) == "docker"
    with pytest.raises(ConfigError, match=r"^WFLO_ISOLATION='gvisor' is not one of auto, "):
        choose_isolation("gvisor", None)


def _no_engine() -> Any:
    raise EngineUnavailable("Docker engine not reachable")


def test_auto_prefers_docker_and_falls_back_to_bubblewrap(make_session: Any) -> None:
    expected = "docker" if docker_answers(os.environ.get("WFLO_DOCKER_HOST")) else "bubblewrap"
    assert choose_isolation("auto", os.environ.get("WFLO_DOCKER_HOST")) == expected
    fallback = open_sandbox_session("auto", "test-auto", "img", _no_engine)
    try:
        assert fallback.isolation == "bubblewrap"
        weaker_notice(ok(fallback, "print('fell back')"))
    finally:
        fallback.close()


def test_killing_bwrap_tears_down_everything_inside(session: SandboxSession) -> None:
    """SIGKILL to the outer bwrap (what ``close`` and a stuck timeout do) ends the pid
    namespace with every process in it; the next cell gets a new sandbox."""
    marker = unique_sleep()
    ok(session, f"import subprocess\nsubprocess.Popen(['sleep', {marker!r}])")
    assert processes_with(marker)
    inside = sandbox_processes()  # bwrap, its init in the namespace, the agent
    os.kill(int((session.container_id or "").removeprefix("bwrap-")), signal.SIGKILL)
    assert processes_with(marker, timeout_s=30) == []
    wait_until(  # a process that ended has no command line (an unreaped one neither)
        lambda: not [pid for pid in inside if proc_table().get(pid, (0, b""))[1]],
        30,
        interval=0.05,
        what=f"the sandbox's processes {inside} to end",
    )
    result = session.execute("print('replaced')", timeout_s=30)
    assert result.ok
    assert result.state_lost
    weaker_notice(result)


def test_a_dead_kernels_sandbox_dies_with_it_and_is_reaped(make_session: Any) -> None:
    marker = unique_sleep()
    script = (
        "import time\n"
        "from wflo_jupyter.sandbox.bwrap import BubblewrapLauncher\n"
        "from wflo_jupyter.sandbox.session import SandboxSession\n"
        "s = SandboxSession(None, 'dead-kernel', launcher=BubblewrapLauncher())\n"
        's.execute("import subprocess\\n'
        f"subprocess.Popen(['sleep', {marker!r}], start_new_session=True)\")\n"
        "print(s.container_id, flush=True)\n"
        "time.sleep(120)\n"
    )
    kernel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout is not None
        assert kernel.stdout.readline().startswith("bwrap-")
        assert processes_with(marker)
    finally:
        kernel.kill()
        kernel.wait()
    # --die-with-parent: the sandbox and everything in it go with the kernel.
    assert processes_with(marker, timeout_s=30) == []
    removed = reap_bubblewrap_leftovers()
    assert any(p.name.startswith(f"s{kernel.pid}-") for p in removed)

    def cgroups_reaped() -> bool:  # they empty out as the namespace is torn down
        reap_bubblewrap_leftovers()
        return leftover_cgroups(kernel.pid) == []

    wait_until(cgroups_reaped, 30, interval=0.1, what="the dead kernel's cgroups to be reaped")
    ok(make_session(), "pass")
