"""``wflo doctor`` against real engines: the suite's stack (every row ok, exit 0), a dead
Docker socket (one blocking line with its remedy, naming the bubblewrap fallback where it
works), engines at closed ports and at a port that never answers, ``%wflo doctor`` in a
real kernel, and the version in ``wflo --version``, ``__version__`` and ``%wflo status``.

The real Docker engine is never stopped (other suites use it): DOCKER_HOST points at a
socket nobody listens on instead."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import wflo_jupyter
from tests.kernel_driver import Kernel
from wflo_jupyter.doctor.sandbox import probe_bwrap

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.temporal,
    pytest.mark.kafka,
    pytest.mark.docker,
]

WFLO = [sys.executable, "-m", "wflo_jupyter.cli"]


def wflo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WFLO, *args],
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def doctor_json(env: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, Any]:
    done = wflo("doctor", "--json", "--timeout", str(timeout), env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["check"]: row for row in report["checks"]}


@pytest.fixture
def dead_socket(tmp_path: Path) -> Iterator[str]:
    """A Unix socket that is bound but never listens: connecting is refused."""
    path = tmp_path / "docker.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    yield f"unix://{path}"
    sock.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_doctor_against_the_test_stack(stack_env: dict[str, str], runtime_image: str) -> None:
    code, report = doctor_json()
    assert code == 0, report
    found = rows(report)
    expected = {
        "Docker engine",
        "bubblewrap fallback",
        "runtime image",
        "postgres",
        "redis",
        "temporal",
        "kafka",
        "Python",
        "openai SDK",
        "anthropic SDK",
        "tokenizer",
        "disk space",
    }
    assert set(found) == expected
    assert {name: row["level"] for name, row in found.items()} == dict.fromkeys(expected, "ok")
    assert report["ok"] is True and report["blocking"] == []
    assert report["version"] == wflo_jupyter.__version__
    assert found["runtime image"]["state"] == "current"
    assert runtime_image in found["runtime image"]["found"]
    assert stack_env["WFLO_TEMPORAL_ADDRESS"] in found["temporal"]["found"]
    assert stack_env["WFLO_REDIS_URL"] in found["redis"]["found"]
    assert found["postgres"]["found"].startswith("postgres 16")

    text = wflo("doctor")
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip().splitlines()[-1] == "ready for the quickstart"
    assert "Docker engine" in text.stdout and "runtime image" in text.stdout


def test_doctor_before_wflo_up(runtime_image: str, tmp_path: Path) -> None:
    """A new user's machine: nothing configured, no local stack yet. Its engines are
    started on demand, so nothing blocks; each row says how to start it."""
    env = {k: "" for k in os.environ if k.startswith("WFLO_") and k != "WFLO_RUNTIME_IMAGE"}
    code, report = doctor_json({**env, "WFLO_HOME": str(tmp_path / "home")})
    assert code == 0, report
    found = rows(report)
    for engine in ("postgres", "redis", "temporal"):
        assert (found[engine]["level"], found[engine]["state"]) == ("info", "not running")
        assert "`wflo up` starts it" in found[engine]["remedy"]
    assert "--with-kafka" in found["kafka"]["remedy"]
    assert str(tmp_path) in found["disk space"]["found"]


def test_doctor_with_docker_unreachable(stack_env: dict[str, str], dead_socket: str) -> None:
    code, report = doctor_json({"DOCKER_HOST": dead_socket, "WFLO_DOCKER_HOST": ""})
    assert code == 1
    found = rows(report)
    assert report["blocking"] == ["Docker engine"]
    docker = found["Docker engine"]
    assert (docker["state"], docker["level"]) == ("unreachable", "fail")
    assert dead_socket in docker["found"] and "connection refused" in docker["found"]
    assert "start the Docker engine" in docker["remedy"]
    bwrap_works = probe_bwrap().works
    assert ("bubblewrap" in docker["remedy"]) is bwrap_works
    assert found["bubblewrap fallback"]["level"] == ("ok" if bwrap_works else "info")
    assert found["runtime image"]["level"] == "skip"  # said once, by the Docker line
    assert all(found[e]["level"] == "ok" for e in ("postgres", "redis", "temporal", "kafka"))

    text = wflo("doctor", env={"DOCKER_HOST": dead_socket, "WFLO_DOCKER_HOST": ""})
    assert text.returncode == 1
    lines = text.stdout.strip().splitlines()
    assert [line for line in lines if "unreachable" in line and "Docker engine" in line]
    assert lines[-1] == "the quickstart is blocked: Docker engine unreachable"


def test_engines_at_closed_ports(stack_env: dict[str, str], closed_port: int) -> None:
    database = f"postgresql://wflo@127.0.0.1:{closed_port}/wflo"
    redis_url = f"redis://127.0.0.1:{closed_port}/0"
    code, report = doctor_json(
        {"WFLO_DATABASE_URL": database, "WFLO_REDIS_URL": redis_url}, timeout=2
    )
    assert code == 1
    found = rows(report)
    assert report["blocking"] == ["postgres"]  # a down Redis degrades, it does not block
    postgres, redis = found["postgres"], found["redis"]
    assert (postgres["state"], postgres["level"]) == ("down", "fail")
    assert f"127.0.0.1:{closed_port}" in postgres["found"]
    assert "WFLO_DATABASE_URL" in postgres["found"] and "WFLO_DATABASE_URL" in postgres["remedy"]
    assert (redis["state"], redis["level"]) == ("down", "warn")
    assert redis_url in redis["found"] and "uncached" in redis["remedy"]
    assert found["temporal"]["level"] == "ok"


def test_an_engine_that_never_answers_is_bounded(
    stack_env: dict[str, str], silent_port: int
) -> None:
    address = f"127.0.0.1:{silent_port}"
    code, report = doctor_json({"WFLO_TEMPORAL_ADDRESS": address}, timeout=1)
    assert code == 1
    temporal = rows(report)["temporal"]
    assert (temporal["state"], temporal["level"]) == ("down", "fail")
    assert address in temporal["found"]
    assert report["verdict"] == "the quickstart is blocked: temporal down"


def test_version() -> None:
    done = wflo("--version")
    assert done.returncode == 0, done.stderr
    installed = importlib.metadata.version("wflo-jupyter")
    assert done.stdout.strip() == f"wflo-jupyter {installed}"
    assert wflo_jupyter.__version__ == installed


def test_doctor_and_status_in_a_kernel(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel()
    run = kernel.run("%wflo doctor --timeout 5")
    assert run.status == "ok", run.error_line
    bundle = run.data[-1]
    text, html = str(bundle["text/plain"]), str(bundle.get("text/html", ""))
    lines = text.splitlines()
    assert lines[0].startswith("wflo doctor (")
    assert lines[-1] == "ready for the quickstart"
    for check in ("Docker engine", "runtime image", "postgres", "temporal", "disk space"):
        assert any(line.startswith(check) for line in lines), check
    assert "<table" in html and "Docker engine" in html and "ready for the quickstart" in html

    bad = kernel.run("%wflo doctor --timeout never")
    assert bad.status == "error"
    assert bad.stderr.strip() == (
        "UsageError: %wflo doctor: argument --timeout: not a number of seconds: 'never'"
    )

    status = kernel.run("%wflo status")
    assert status.status == "ok", status.error_line
    assert f"wflo-jupyter  {wflo_jupyter.__version__}" in status.data[-1]["text/plain"]
