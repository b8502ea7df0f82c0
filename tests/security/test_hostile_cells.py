"""Hostile cells in a real kernel. Each asserts containment, a clear message, a live
kernel, and no leaked container (at most the session's own one, none after unload)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.kernel_driver import CellRun, Kernel, loaded_kernel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.security,
    pytest.mark.kernel,
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.postgres,
]

SECRET = "sk-host-secret"
ANT_SECRET = "sk-ant-host-secret"
PWNED = Path(f"/tmp/wflo-pwned-{uuid.uuid4().hex}")


def _host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@dataclass(frozen=True)
class Hostile:
    name: str
    cell: str
    check: Callable[[CellRun], None]
    options: str = "--timeout 20"


def _all(run: CellRun) -> str:
    return run.stdout + run.stderr + run.error_line


def expect_error(*needles: str) -> Callable[[CellRun], None]:
    def check(run: CellRun) -> None:
        assert run.status == "error", _all(run)[-2000:]
        text = _all(run)
        assert any(n in text for n in needles), text[-2000:]

    return check


def expect_output(*needles: str, absent: tuple[str, ...] = ()) -> Callable[[CellRun], None]:
    def check(run: CellRun) -> None:
        text = _all(run)
        for needle in needles:
            assert needle in text, text[-2000:]
        for needle in absent:
            assert needle not in text, text[-2000:]

    return check


def no_secret(run: CellRun) -> None:
    text = _all(run)
    assert SECRET not in text and ANT_SECRET not in text
    assert "checked" in run.stdout, text[-2000:]


def _capped(run: CellRun) -> None:
    assert run.status == "ok", _all(run)[-2000:]
    assert len(run.stdout) < 11 * 1024 * 1024
    assert "output cap" in run.stderr


def _binary(run: CellRun) -> None:
    assert run.status == "ok", _all(run)[-2000:]
    assert "done" in run.stdout


def _long_line(run: CellRun) -> None:
    assert run.status == "ok"
    assert run.stdout.count("y") == 2_000_000


def _no_pwn(run: CellRun) -> None:
    assert run.status == "error"
    assert run.error is not None
    assert run.error["ename"] == "UnsafeOutput", _all(run)[-2000:]
    assert "loot" in run.error["evalue"]
    assert not PWNED.exists()


CASES = [
    Hostile(
        "fork_bomb",
        "import os\nwhile True:\n    os.fork()",
        expect_error(
            "BlockingIOError", "Resource temporarily unavailable", "state was lost", "TimeoutError"
        ),
        "--timeout 10",
    ),
    Hostile(
        "memory_bomb",
        "blob = b'x' * (600 * 1024 * 1024)",
        expect_error("exceeded (OOM-killed)"),
        "--memory 128m",
    ),
    Hostile(
        "cpu_spin",
        "while True:\n    pass",
        expect_error("TimeoutError: the cell ran longer than 2 s"),
        "--timeout 2",
    ),
    Hostile(
        "sleep_past_timeout",
        "import time\ntime.sleep(100)",
        expect_error("TimeoutError: the cell ran longer than 2 s"),
        "--timeout 2",
    ),
    Hostile(
        "tcp_to_host",
        (
            "import socket\n"
            f"for host, port in [('{_host_ip()}', 5432), ('127.0.0.1', 5432), ('172.17.0.1', 2375)]:\n"
            "    s = socket.socket(); s.settimeout(2)\n"
            "    try:\n"
            "        s.connect((host, port)); print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('blocked', host, type(e).__name__)\n"
        ),
        expect_output("blocked", absent=("CONNECTED",)),
    ),
    Hostile(
        "cloud_metadata",
        (
            "import socket\n"
            "s = socket.socket(); s.settimeout(2)\n"
            "try:\n"
            "    s.connect(('169.254.169.254', 80)); print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('blocked', type(e).__name__)\n"
        ),
        expect_output("blocked", absent=("CONNECTED",)),
    ),
    Hostile(
        "dns_lookup",
        (
            "import socket\n"
            "try:\n"
            "    print('RESOLVED', socket.getaddrinfo('pypi.org', 443))\n"
            "except OSError as e:\n"
            "    print('no dns', type(e).__name__)\n"
        ),
        expect_output("no dns", absent=("RESOLVED",)),
    ),
    Hostile(
        "environment_keys",
        (
            "import os\n"
            "leaks = [k for k, v in os.environ.items() if 'sk-' in v or 'API_KEY' in k and 'wflo' not in v]\n"
            "print('leaks', leaks)\nprint('checked')\n"
        ),
        no_secret,
    ),
    Hostile(
        "proc_environ",
        (
            "import glob\n"
            "found = []\n"
            "for path in glob.glob('/proc/*/environ'):\n"
            "    try:\n"
            "        data = open(path, 'rb').read()\n"
            "    except OSError:\n"
            "        continue\n"
            f"    if b'{SECRET}' in data or b'{ANT_SECRET}' in data:\n"
            "        found.append(path)\n"
            "print('found', found)\nprint('checked')\n"
        ),
        expect_output("found []", "checked"),
    ),
    Hostile(
        "host_files",
        (
            "import os\n"
            "for p in ['/work', '/root/.wflo', '/var/lib/docker', '/etc/shadow', '/proc/1/root/work']:\n"
            "    try:\n"
            "        os.listdir(p) if os.path.isdir(p) else open(p).read()\n"
            "        print('READ', p)\n"
            "    except OSError as e:\n"
            "        print('denied', p, type(e).__name__)\n"
        ),
        expect_output("denied /work", "denied /etc/shadow", absent=("READ",)),
    ),
    Hostile(
        "write_outside_workspace",
        (
            "try:\n"
            "    open('/home/sandbox/evil', 'w').write('x'); print('WROTE')\n"
            "except OSError as e:\n"
            "    print('denied', type(e).__name__)\n"
        ),
        expect_output("denied", absent=("WROTE",)),
    ),
    Hostile(
        "write_readonly_root",
        (
            "import os\n"
            "for p in ['/usr/lib/evil', '/etc/passwd', '/opt/wflo-agent/agent.py', '/bin/sh']:\n"
            "    try:\n"
            "        open(p, 'a').write('x'); print('WROTE', p)\n"
            "    except OSError as e:\n"
            "        print('denied', p)\n"
        ),
        expect_output("denied /etc/passwd", "denied /opt/wflo-agent/agent.py", absent=("WROTE",)),
    ),
    Hostile(
        "fill_tmpfs",
        (
            "chunk = b'x' * (1024 * 1024)\n"
            "try:\n"
            "    with open('/workspace/fill', 'wb') as f:\n"
            "        for _ in range(2048):\n"
            "            f.write(chunk)\n"
            "    print('FILLED')\n"
            "except OSError as e:\n"
            "    print('full', e.strerror)\n"
            "import os; os.remove('/workspace/fill')\n"
        ),
        expect_output("full No space left on device", absent=("FILLED",)),
    ),
    Hostile(
        "docker_socket",
        (
            "import socket\n"
            "for p in ['/var/run/docker.sock', '/run/docker.sock']:\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n"
            "        s.connect(p); print('CONNECTED', p)\n"
            "    except OSError as e:\n"
            "        print('no socket', p)\n"
        ),
        expect_output("no socket /var/run/docker.sock", absent=("CONNECTED",)),
    ),
    Hostile("setuid_root", "import os\nos.setuid(0)", expect_error("PermissionError")),
    Hostile(
        "capabilities",
        (
            "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
            "print('caps', status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip())\n"
            "import os\n"
            "open('/workspace/f', 'w').close()\n"
            "try:\n"
            "    os.chown('/workspace/f', 0, 0); print('CHOWNED')\n"
            "except OSError as e:\n"
            "    print('chown denied')\n"
        ),
        expect_output(
            "caps 0000000000000000 0000000000000000 1", "chown denied", absent=("CHOWNED",)
        ),
    ),
    Hostile(
        "hundred_mb_stdout",
        "import sys\nfor _ in range(100):\n    sys.stdout.write('z' * 1024 * 1024)",
        _capped,
        "--timeout 60",
    ),
    Hostile(
        "binary_garbage",
        "import os, sys\nsys.stdout.buffer.write(os.urandom(200000))\nsys.stdout.flush()\nprint('done')",
        _binary,
    ),
    Hostile(
        "os_exit", "import os\nos._exit(3)", expect_error("the sandbox agent died (exit code 3)")
    ),
    Hostile(
        "sigkill_self",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        expect_error("SIGKILL", "exit code 137"),
    ),
    Hostile(
        "close_channel",
        "import os\nos.closerange(3, 65536)\nimport time\ntime.sleep(5)",
        expect_error("lost its channel", "state was lost", "agent died"),
    ),
    Hostile(
        "crafted_pickle_out",
        (
            "import base64, gc, pickle\n"
            "class Evil:\n"
            "    def __reduce__(self):\n"
            f"        return (open, ('{PWNED}', 'w'))\n"
            "payload = base64.b64encode(pickle.dumps(Evil())).decode()\n"
            "for g in [o for o in gc.get_objects() if isinstance(o, dict) and 'encode_value' in o]:\n"
            "    g['encode_value'] = lambda name, value: {'format': 'pickle', 'type': 'int', 'data': payload}\n"
            "loot = 1\n"
        ),
        _no_pwn,
        "--timeout 20 --out loot",
    ),
    Hostile(
        "daemon_left_running",
        (
            "import subprocess\n"
            "subprocess.Popen(['sh', '-c', 'while true; do sleep 1; done'])\n"
            "print('spawned')\n"
        ),
        expect_output("spawned"),
    ),
    Hostile(
        "prints_forever",
        "while True:\n    print('spam ' * 20)",
        expect_error("TimeoutError"),
        "--timeout 3",
    ),
    Hostile("unicode", "print('ünïcödé ✓ 🚀 \\u202e ok')", expect_output("ünïcödé ✓ 🚀 \u202e ok")),
    Hostile("very_long_line", "print('y' * 2_000_000)", _long_line),
    Hostile(
        "mount_tmpfs",
        (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.mount(b'none', b'/workspace', b'tmpfs', 0, None)\n"
            "print('mount rc', rc, os.strerror(ctypes.get_errno()))\n"
        ),
        expect_output("mount rc -1"),
    ),
    Hostile(
        "read_pid1_memory",
        (
            "try:\n"
            "    open('/proc/1/mem', 'rb').read(16); print('READ')\n"
            "except OSError as e:\n"
            "    print('denied', type(e).__name__)\n"
        ),
        expect_output("denied", absent=("READ",)),
    ),
    Hostile(
        "sysrq_trigger",
        (
            "try:\n"
            "    open('/proc/sysrq-trigger', 'w').write('b'); print('WROTE')\n"
            "except OSError as e:\n"
            "    print('denied', type(e).__name__)\n"
        ),
        expect_output("denied", absent=("WROTE",)),
    ),
    Hostile(
        "raw_socket",
        (
            "import socket\n"
            "try:\n"
            "    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('RAW')\n"
            "except OSError as e:\n"
            "    print('denied', type(e).__name__)\n"
        ),
        expect_output("denied", absent=("RAW",)),
    ),
    Hostile(
        "unshare_user_namespace",
        (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('unshare rc', libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))\n"
        ),
        expect_output("unshare rc -1"),
    ),
    Hostile(
        "agent_memory_for_keys",
        (
            "import gc\n"
            "hits = [o for o in gc.get_objects() if isinstance(o, str) and 'sk-' in o and 'host' in o]\n"
            "print('hits', len(hits))\nprint('checked')\n"
        ),
        expect_output("hits 0", "checked"),
    ),
]


@pytest.fixture(scope="module")
def kernel(stack_env: dict[str, str], runtime_image: str) -> Iterator[Kernel]:
    with loaded_kernel(env={"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": ANT_SECRET}) as k:
        yield k


@pytest.fixture(scope="module")
def session_id(kernel: Kernel) -> str:
    run = kernel.run("print(get_ipython().find_magic('wflo').__self__.session.session_id)")
    return run.stdout.strip()


def test_there_are_at_least_thirty_hostile_cells() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_cell_is_contained(
    case: Hostile, kernel: Kernel, session_id: str, docker_client: docker.DockerClient
) -> None:
    run = kernel.run(f"%%wflo {case.options}\n{case.cell}", timeout=300)
    case.check(run)
    assert SECRET not in _all(run)
    # the kernel is alive and the next cell works (in a new container if state was lost)
    assert kernel.alive()
    assert kernel.run("%%wflo\nprint('next cell ok')").stdout == "next cell ok\n"
    containers = docker_client.containers.list(
        all=True, filters={"label": f"org.wflo.session={session_id}"}
    )
    assert len(containers) <= 1, [c.name for c in containers]
    assert all(c.status == "running" for c in containers)
    assert not PWNED.exists()


def test_no_container_is_left_after_unload(
    stack_env: dict[str, str], runtime_image: str, docker_client: docker.DockerClient
) -> None:
    k = Kernel(env={"OPENAI_API_KEY": SECRET})
    try:
        k.run("%load_ext wflo_jupyter")
        sid = k.run(
            "print(get_ipython().find_magic('wflo').__self__.session.session_id)"
        ).stdout.strip()
        k.run("%%wflo\nimport subprocess\nsubprocess.Popen(['sleep', '1000'])")
        assert docker_client.containers.list(all=True, filters={"label": f"org.wflo.session={sid}"})
        k.run("%unload_ext wflo_jupyter")
        assert (
            docker_client.containers.list(all=True, filters={"label": f"org.wflo.session={sid}"})
            == []
        )
        assert os.environ.get("OPENAI_API_KEY") != SECRET  # the test process itself is clean
    finally:
        k.shutdown()
