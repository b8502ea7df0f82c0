"""``DockerSandbox`` against the real Docker engine and the runtime image."""

from __future__ import annotations

import uuid
from typing import Any

import docker
import pytest

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.docker_runner import DockerSandbox, SandboxRun

pytestmark = [pytest.mark.integration, pytest.mark.docker]

MB = 1024**2


@pytest.fixture
def sandbox(docker_client: docker.DockerClient, runtime_image: str):
    box = DockerSandbox(docker_client, f"test-{uuid.uuid4().hex[:8]}")
    yield box
    assert box.leftover_containers() == []


def run(box: DockerSandbox, code: str, image: str, **limits: Any) -> SandboxRun:
    options: dict[str, Any] = {
        "timeout_s": 30,
        "memory_bytes": 256 * MB,
        "cpus": 1.0,
        "pids_limit": 64,
    }
    options.update(limits)
    return box.run(code, step_id=str(uuid.uuid4()), image=image, **options)


# basic execution
def test_prints_stdout(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "print('hello'); print(6 * 7)", runtime_image)
    assert (result.exit_code, result.reason, result.stdout) == (0, "ok", "hello\n42\n")


def test_stderr_is_separate(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "import sys; print('out'); print('err', file=sys.stderr)", runtime_image)
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_runs_as_sandbox_user_in_workspace(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = (
        "import os, pathlib; "
        "print(os.getuid(), os.getgid(), os.getcwd(), pathlib.Path('/.dockerenv').exists())"
    )
    assert run(sandbox, code, runtime_image).stdout.split() == [
        "1000",
        "1000",
        "/workspace",
        "True",
    ]


def test_multiline_code_and_unicode(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = "def f(x):\n    return x * 2\n\nprint(f(21), 'héllo ✓')\n"
    assert run(sandbox, code, runtime_image).stdout == "42 héllo ✓\n"


# error handling
def test_exception_gives_traceback(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "1 / 0", runtime_image)
    assert result.reason == "error"
    assert result.exit_code == 1
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "Traceback" in result.stderr


def test_syntax_error(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "def broken(:\n", runtime_image)
    assert result.reason == "error"
    assert "SyntaxError" in result.stderr


def test_exit_code_is_kept(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "import sys; sys.exit(3)", runtime_image)
    assert (result.exit_code, result.reason) == (3, "error")


# timeouts
def test_sleep_past_timeout_is_killed(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(
        sandbox,
        "import time; print('start', flush=True); time.sleep(60)",
        runtime_image,
        timeout_s=2,
    )
    assert result.reason == "timeout"
    assert result.exit_code is None
    assert result.seconds < 20
    assert "start" in result.stdout
    assert "timeout" in result.stderr


def test_cpu_spin_past_timeout_is_killed(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "while True: pass", runtime_image, timeout_s=2)
    assert result.reason == "timeout"


# resource limits
def test_memory_limit_oom_kills(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(
        sandbox,
        "x = bytearray(400 * 1024 * 1024); print(len(x))",
        runtime_image,
        memory_bytes=64 * MB,
    )
    assert result.reason == "oom"
    assert "memory limit 64m exceeded (OOM-killed)" in result.stderr


def test_pids_limit_stops_fork_bomb(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(5); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('blocked after', n, type(e).__name__)\n"
    )
    result = run(sandbox, code, runtime_image, pids_limit=32)
    assert "blocked after" in result.stdout
    assert int(result.stdout.split()[2]) < 32


# network isolation
def test_only_loopback_interface(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = "import socket; print(sorted(n for _, n in socket.if_nameindex()))"
    assert run(sandbox, code, runtime_image).stdout.strip() == "['lo']"


def test_no_outbound_connection(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = (
        "import socket\n"
        "for host in ('169.254.169.254', '1.1.1.1'):\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try:\n"
        "        s.connect((host, 80)); print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host, e.errno)\n"
    )
    out = run(sandbox, code, runtime_image).stdout
    assert "connected" not in out
    assert out.count("refused") == 2


# security
def test_cannot_write_root_or_etc(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = (
        "import pathlib\n"
        "for p in ('/etc/x', '/x', '/usr/x'):\n"
        "    try:\n"
        "        pathlib.Path(p).write_text('x'); print('wrote', p)\n"
        "    except OSError as e:\n"
        "        print('denied', p)\n"
        "pathlib.Path('/workspace/ok').write_text('x'); print('workspace ok')\n"
    )
    out = run(sandbox, code, runtime_image).stdout
    assert "wrote" not in out
    assert out.count("denied") == 3
    assert "workspace ok" in out


def test_no_capabilities_and_no_new_privileges(sandbox: DockerSandbox, runtime_image: str) -> None:
    code = (
        "lines = open('/proc/self/status').read().splitlines()\n"
        "status = dict(l.split(':\\t', 1) for l in lines if ':\\t' in l)\n"
        "print(status['CapEff'].strip(), status['NoNewPrivs'].strip())\n"
    )
    assert run(sandbox, code, runtime_image).stdout.split() == ["0000000000000000", "1"]


def test_host_environment_does_not_leak(
    sandbox: DockerSandbox, runtime_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    out = run(sandbox, "import os; print(sorted(os.environ))", runtime_image).stdout
    assert "OPENAI_API_KEY" not in out
    assert "sk-host-secret" not in out


# cleanup and edge cases
def test_missing_image_is_one_line_and_leaks_nothing(sandbox: DockerSandbox) -> None:
    with pytest.raises(SandboxError, match=r"image 'wflo-missing:none' not found; build it"):
        run(sandbox, "print(1)", "wflo-missing:none")


def test_failed_creation_leaks_nothing(sandbox: DockerSandbox, runtime_image: str) -> None:
    # An invalid CPU value makes the engine refuse the container at creation time.
    with pytest.raises(SandboxError, match="could not start the sandbox"):
        run(sandbox, "print(1)", runtime_image, cpus=10_000)


def test_containers_are_removed_after_each_run(
    sandbox: DockerSandbox, runtime_image: str, docker_client: docker.DockerClient
) -> None:
    results = [
        run(sandbox, code, runtime_image, timeout_s=3)
        for code in ("print(1)", "1/0", "import time; time.sleep(30)")
    ]
    assert [r.reason for r in results] == ["ok", "error", "timeout"]
    for result in results:
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(result.container_id)


def test_large_output_is_capped(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(
        sandbox,
        "import sys\nfor _ in range(12): sys.stdout.write('x' * 1024 * 1024)",
        runtime_image,
    )
    assert result.reason == "ok"
    assert "output truncated" in result.stdout
    assert len(result.stdout) < 11 * MB


def test_binary_garbage_on_stdout(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "import sys; sys.stdout.buffer.write(bytes(range(256)))", runtime_image)
    assert result.reason == "ok"
    assert "\ufffd" in result.stdout


def test_empty_program(sandbox: DockerSandbox, runtime_image: str) -> None:
    result = run(sandbox, "pass", runtime_image)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
