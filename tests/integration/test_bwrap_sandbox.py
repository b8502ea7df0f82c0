"""The session agent under bubblewrap (``WFLO_ISOLATION=bubblewrap``), the explicit
``unisolated`` mode and ``choose_isolation``.

Bubblewrap is selected explicitly here, so these tests run (and must pass) on a machine
with a Docker engine as well as on one without. They need ``bwrap`` and the system
``/usr/bin/python3`` (the interpreter the sandbox runs)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from wflo_jupyter.core.errors import ConfigError, EngineUnavailable, SandboxError
from wflo_jupyter.sandbox.bwrap import (
    BubblewrapLauncher,
    probe_bubblewrap,
    reap_bubblewrap_leftovers,
    shared_socket_base,
)
from wflo_jupyter.sandbox.isolation import (
    NO_ISOLATION,
    UNISOLATED_NOTICE,
    UnisolatedLauncher,
    choose_isolation,
    docker_answers,
    open_sandbox_session,
)
from wflo_jupyter.sandbox.session import (
    ExecResult,
    SandboxLimits,
    SandboxSession,
    default_socket_base,
)

pytestmark = [pytest.mark.integration, pytest.mark.security]

MB = 1024**2
REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_SECRET = "sk-host-secret-" + uuid.uuid4().hex
BOGUS_DOCKER = "unix:///nonexistent/wflo-test/docker.sock"
WEAKER = "[isolation: bubblewrap — weaker isolation than Docker:"


# -- helpers ----------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (ppid, cmdline) of every process on the host."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            table[int(entry.name)] = (ppid, Path(entry.path, "cmdline").read_bytes())
    return table


def sandbox_processes() -> list[int]:
    """Our descendants that belong to a sandbox (bwrap or an agent)."""
    table = _proc_table()
    found: list[int] = []
    for pid, (_, cmdline) in table.items():
        if b"bwrap" not in cmdline and b"agent.py" not in cmdline:
            continue
        seen: set[int] = set()
        parent = table.get(pid, (0, b""))[0]
        while parent > 1 and parent not in seen:
            if parent == os.getpid():
                found.append(pid)
                break
            seen.add(parent)
            parent = table.get(parent, (0, b""))[0]
    return found


def processes_with(marker: str, timeout_s: float = 0.0) -> list[int]:
    """Host pids (anywhere on the host) whose command line contains ``marker``; with a
    timeout, polls until there are none (failing the test after ``timeout_s``)."""

    def found() -> list[int]:
        return [pid for pid, (_, cmd) in _proc_table().items() if marker.encode() in cmd]

    if timeout_s <= 0:
        return found()
    wait_until(lambda: not found(), timeout_s, interval=0.05, what=f"no process with {marker!r}")
    return []


def unique_sleep() -> str:
    """A ``sleep`` duration that marks one test's daemon process (``sleep 300.<digits>``)."""
    return f"300.{uuid.uuid4().int % 10**9:09d}"


def leftover_dirs() -> set[str]:
    prefix = f"s{os.getpid()}-"
    found: set[str] = set()
    for base in (default_socket_base(), shared_socket_base()):
        if base.is_dir():
            found |= {str(p) for p in base.iterdir() if p.name.startswith(prefix)}
    return found


def leftover_cgroups() -> list[str]:
    prefix = f"wflo-{os.getpid()}-"
    found: list[str] = []
    root = Path("/sys/fs/cgroup")
    for top, dirs, _ in os.walk(root):
        depth = len(Path(top).relative_to(root).parts)
        found += [os.path.join(top, d) for d in dirs if d.startswith(prefix)]
        if depth >= 6:
            dirs[:] = []
    return found


def text_plain(result: ExecResult) -> list[str]:
    return [data.get("text/plain", "") for data, _ in result.displays]


def ok(session: SandboxSession, code: str, **options: Any) -> ExecResult:
    result = session.execute(code, **options)
    assert result.ok, result.error_line + "\n" + result.traceback
    return result


def weaker_notice(result: ExecResult) -> str:
    assert result.isolation == "bubblewrap"
    assert result.notices, "a bubblewrap result carries the isolation notice"
    notice = result.notices[0]
    assert notice.startswith(WEAKER), notice
    assert "weaker isolation" in notice
    return notice


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bwrap_ready() -> str:
    try:
        support = probe_bubblewrap()
    except SandboxError as exc:
        pytest.fail(f"bubblewrap is needed for these tests: {exc}")
    return support.mode


@pytest.fixture
def make_session(bwrap_ready: str) -> Iterator[Any]:
    made: list[SandboxSession] = []
    dirs_before = leftover_dirs()

    def make(launcher: Any = None, **options: Any) -> SandboxSession:
        session = SandboxSession(
            None,
            f"test-bwrap-{uuid.uuid4().hex[:8]}",
            launcher=launcher or BubblewrapLauncher(),
            **options,
        )
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()
    wait_until(lambda: sandbox_processes() == [], 30, interval=0.05, what="every sandbox to end")
    assert leftover_dirs() <= dirs_before
    assert leftover_cgroups() == []


@pytest.fixture
def session(make_session: Any) -> SandboxSession:
    return make_session()


# -- the agent works the same way -------------------------------------------------------


def test_state_persists_and_every_cell_says_weaker_isolation(session: SandboxSession) -> None:
    assert session.isolation == "bubblewrap"
    first = ok(session, "x = 41")
    second = ok(session, "x + 1")
    failed = session.execute("1 / 0")
    assert text_plain(second) == ["42"]
    assert first.container_id == second.container_id
    assert first.container_id.startswith("bwrap-")
    assert (first.execution_count, second.execution_count) == (1, 2)
    assert failed.error_line == "ZeroDivisionError: division by zero"
    for result in (first, second, failed):
        weaker_notice(result)
        assert not result.state_lost


def test_output_streams_live(session: SandboxSession) -> None:
    arrivals: list[tuple[float, str, str]] = []
    started = time.monotonic()

    def on_stream(name: str, text: str) -> None:
        arrivals.append((time.monotonic() - started, name, text))

    code = (
        "import sys, time\nprint('first')\ntime.sleep(1)\nprint('second')\n"
        "print('err', file=sys.stderr)"
    )
    result = ok(session, code, on_stream=on_stream)
    assert result.stdout == "first\nsecond\n"
    assert result.stderr == "err\n"
    first_at = next(t for t, _, text in arrivals if "first" in text)
    second_at = next(t for t, _, text in arrivals if "second" in text)
    # the first line came during the cell's 1 s sleep (buffered, both would come at the end)
    assert second_at - first_at >= 0.5, arrivals
    weaker_notice(result)


def test_display_and_values(session: SandboxSession) -> None:
    code = (
        "class Card:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>card</b>'\n"
        "    def _repr_png_(self):\n"
        "        return b'\\x89PNG fake'\n"
        "print('before')\n"
        "display(Card())\n"
        "total = sum(nums)\n"
        "blob = raw[::-1]\n"
    )
    result = ok(
        session,
        code,
        inputs={"nums": [1, 2, 3], "raw": b"\x00\x01"},
        outputs=["total", "blob"],
    )
    ((bundle, _),) = result.displays
    assert bundle["text/html"] == "<b>card</b>"
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake"
    assert result.outputs == {"total": 6, "blob": b"\x01\x00"}
    weaker_notice(result)


def test_run_fresh_has_no_state(session: SandboxSession) -> None:
    ok(session, "x = 1")
    fresh = session.run_fresh("print(x)")
    assert fresh.error_line == "NameError: name 'x' is not defined"
    assert fresh.container_id != session.container_id
    weaker_notice(fresh)
    assert text_plain(ok(session, "x")) == ["1"]


# -- timeouts, interrupts, death ----------------------------------------------------------


def test_timeout_interrupts_and_keeps_state(session: SandboxSession) -> None:
    ok(session, "x = 1")
    result = session.execute("import time\nx = 2\ntime.sleep(30)\nx = 3", timeout_s=1)
    assert result.exit_reason == "timeout"
    assert not result.state_lost
    assert "ran longer than 1 s and was interrupted" in result.evalue
    assert result.seconds < 10  # interrupted after 1 s, not the cell's 30 s
    weaker_notice(result)
    assert text_plain(ok(session, "x")) == ["2"]


def test_hung_cell_is_killed_and_the_next_cell_works(session: SandboxSession) -> None:
    ok(session, "x = 1")
    first_id = session.container_id
    marker = unique_sleep()
    code = (
        "import signal, subprocess, time\n"
        f"subprocess.Popen(['sleep', {marker!r}], start_new_session=True)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "time.sleep(60)\n"
    )
    result = session.execute(code, timeout_s=1)
    assert result.exit_reason == "timeout"
    assert result.state_lost
    assert "did not stop when interrupted; the sandbox was killed" in result.evalue
    assert result.seconds < 20  # 1 s, the 2 s grace, the kill: not the cell's 60 s
    weaker_notice(result)
    assert processes_with(marker, timeout_s=30) == []  # the daemon died with the sandbox
    after = session.execute("x")
    assert after.error_line == "NameError: name 'x' is not defined"
    assert after.container_id != first_id
    weaker_notice(after)


def test_tight_c_loop_is_killed(session: SandboxSession) -> None:
    result = session.execute("sum(range(10**14))", timeout_s=1)
    assert (result.exit_reason, result.state_lost) == ("timeout", True)
    assert ok(session, "print('next')").stdout == "next\n"


def test_interrupt_from_another_thread(session: SandboxSession) -> None:
    ok(session, "y = 5")
    interrupter: list[threading.Thread] = []

    def on_stream(name: str, text: str) -> None:
        if "started" in text and not interrupter:
            interrupter.append(threading.Thread(target=session.interrupt))
            interrupter[0].start()

    result = session.execute(
        "import time; print('started', flush=True); time.sleep(30)",
        timeout_s=30,
        on_stream=on_stream,
    )
    interrupter[0].join()
    assert (result.exit_reason, result.ename, result.state_lost) == (
        "interrupted",
        "KeyboardInterrupt",
        False,
    )
    assert text_plain(ok(session, "y")) == ["5"]


def test_os_exit_is_reported_as_agent_death(session: SandboxSession) -> None:
    ok(session, "x = 1")
    result = session.execute("import os\nprint('bye', flush=True)\nos._exit(3)")
    assert result.exit_reason == "agent_died"
    assert result.evalue == "the sandbox agent died (exit code 3); state was lost"
    assert result.state_lost
    weaker_notice(result)
    assert ok(session, "print(1 + 1)").stdout == "2\n"


def test_sigkill_to_itself(session: SandboxSession) -> None:
    result = session.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert result.exit_reason == "agent_died"
    assert "exit code 137, SIGKILL" in result.evalue
    assert ok(session, "print('ok')").stdout == "ok\n"


def test_agent_death_between_cells_is_noticed(session: SandboxSession) -> None:
    ok(session, "import os, threading\nthreading.Timer(0.2, os._exit, (4,)).start()")
    wait_until(  # bwrap and the agent are gone (an unreaped bwrap has no command line)
        lambda: sandbox_processes() == [], 30, interval=0.05, what="the sandbox to end"
    )
    result = ok(session, "print('fresh start')")
    assert result.state_lost
    assert any("exit code 4" in notice for notice in result.notices)
    weaker_notice(result)


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


def test_agent_that_cannot_start_leaks_nothing(make_session: Any, tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("raise SystemExit('agent is broken')\n")
    session = make_session(agent_dir=tmp_path, ready_timeout_s=20)
    with pytest.raises(SandboxError, match=r"exited at start \(exit code 1\): agent is broken"):
        session.start()


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


def test_no_network(session: SandboxSession) -> None:
    code = (
        "import socket\n"
        "for host, port in (('1.1.1.1', 53), ('169.254.169.254', 80), ('127.0.0.1', 22)):\n"
        "    s = socket.socket()\n"
        "    s.settimeout(2)\n"
        "    try:\n"
        "        s.connect((host, port))\n"
        "        print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('blocked', type(e).__name__)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "    print('resolved')\n"
        "except OSError:\n"
        "    print('no dns')\n"
    )
    lines = ok(session, code, timeout_s=30).stdout.splitlines()
    assert all(line.startswith("blocked") for line in lines[:3]), lines
    assert lines[3] == "no dns"


def test_cannot_write_outside_workspace(make_session: Any) -> None:
    session = make_session(limits=SandboxLimits(workspace_size="8m"))
    code = (
        "import os\n"
        "for path in ('/x', '/usr/x', '/etc/x', '/opt/wflo-agent/x', '/run/wflo/x', '/dev/x',\n"
        "             '/proc/x', '/etc/passwd', '/opt/wflo-agent/agent.py'):\n"
        "    try:\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError:\n"
        "        print('denied')\n"
        "open('/workspace/ok', 'w').write('fine')\n"
        "open('/tmp/ok', 'w').write('fine')\n"
        "try:\n"
        "    with open('/workspace/big', 'wb') as f:\n"
        "        f.write(b'0' * (16 * 1024 * 1024))\n"
        "    print('filled')\n"
        "except OSError as e:\n"
        "    print('full', e.errno)\n"
        "print(os.listdir('/run/wflo'))\n"
    )
    lines = ok(session, code).stdout.splitlines()
    assert lines[:9] == ["denied"] * 9
    assert lines[9] == "full 28"  # ENOSPC: the workspace tmpfs is size-limited
    assert lines[10] == "[]"  # the socket is unlinked once the agent connected


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


def test_fork_bomb_is_contained(make_session: Any) -> None:
    session = make_session(limits=SandboxLimits(pids_limit=32))
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(3); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('blocked after', n)\n"
    )
    result = ok(session, code)
    assert "blocked after" in result.stdout
    assert int(result.stdout.split()[-1]) < 32
    assert ok(session, "print('alive')").stdout == "alive\n"


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


def test_close_leaves_nothing_and_is_idempotent(session: SandboxSession) -> None:
    marker = unique_sleep()
    code = f"import subprocess\nsubprocess.Popen(['sleep', {marker!r}], start_new_session=True)"
    ok(session, code)
    assert processes_with(marker)
    session.close()
    session.close()
    assert not session.running
    assert processes_with(marker, timeout_s=30) == []
    assert sandbox_processes() == []
    assert leftover_cgroups() == []


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


def test_unisolated_runs_only_when_requested_and_says_so_every_cell(
    bwrap_ready: str, monkeypatch: pytest.MonkeyPatch
) -> None:
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
        second = ok(session, "x + 1")
        failed = session.execute("import os\nos._exit(5)")
        for result in (first, second, failed):
            assert result.isolation == "unisolated"
            assert result.notices[0] == UNISOLATED_NOTICE
        assert first.stdout == "True\n"
        assert text_plain(second) == ["42"]
        assert failed.evalue == "the sandbox agent died (exit code 5); state was lost"
        timed_out = session.execute("import time; time.sleep(30)", timeout_s=1)
        assert timed_out.exit_reason == "timeout"
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
        lambda: not [pid for pid in inside if _proc_table().get(pid, (0, b""))[1]],
        30,
        interval=0.05,
        what=f"the sandbox's processes {inside} to end",
    )
    result = session.execute("print('replaced')", timeout_s=30)
    assert result.ok
    assert result.state_lost
    weaker_notice(result)


def _cgroups_of(pid: int) -> list[str]:
    prefix = f"wflo-{pid}-"
    root = Path("/sys/fs/cgroup")
    found: list[str] = []
    for top, dirs, _ in os.walk(root):
        found += [os.path.join(top, d) for d in dirs if d.startswith(prefix)]
        if len(Path(top).relative_to(root).parts) >= 6:
            dirs[:] = []
    return found


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
        return _cgroups_of(kernel.pid) == []

    wait_until(cgroups_reaped, 30, interval=0.1, what="the dead kernel's cgroups to be reaped")
    ok(make_session(), "pass")
