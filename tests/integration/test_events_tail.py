"""``wflo events tail`` as a user runs it (a subprocess) against the real broker, reading
events the real relay published from a real ledger: JSON lines when piped, the session /
type / topic filters, ``-n``, a consumer group that resumes, readable lines on a terminal,
Ctrl-C, and one-line errors."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import start_step
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.events import OutboxRelay
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.postgres]

TAIL = [sys.executable, "-m", "wflo_jupyter.cli", "events", "tail"]


def _env(home: Path, bootstrap: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_HOME": str(home), "COLUMNS": "200"})
    if bootstrap is not None:
        env["WFLO_KAFKA_BOOTSTRAP"] = bootstrap
    return env


def tail(
    *args: str, home: Path, bootstrap: str | None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TAIL, *args],
        env=_env(home, bootstrap),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
def two_sessions(fresh_database_url: str, kafka_bootstrap: str) -> Iterator[tuple[str, str, str]]:
    """Two sessions' step events on Kafka, published by the real relay: session one has
    a started and a completed step, session two a started one. Yields both session ids
    and session one's step id."""
    ledger = Ledger.connect(fresh_database_url)
    relay = OutboxRelay(ledger, kafka_bootstrap)
    try:
        one, step = start_step(ledger, name="tail-one")
        ledger.finish_step(
            StepResult(step_id=step, status="completed", exit_code=0, exit_reason="ok")
        )
        two, _ = start_step(ledger, name="tail-two")
        assert relay.relay_once() >= 3
        assert ledger.unsent_events() == []
        yield one, two, step
    finally:
        relay.stop()
        ledger.close()


def test_piped_output_is_json_lines_filtered_by_session_and_type(
    two_sessions: tuple[str, str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    one, _, step = two_sessions  # session two's events are on the topic too
    ran = tail(
        "--from-beginning",
        "--session",
        one,
        "--idle",
        "2",
        home=tmp_path,
        bootstrap=kafka_bootstrap,
    )
    assert ran.returncode == 0, ran.stderr
    events = _lines(ran.stdout)  # every line is one JSON envelope
    assert [(e["type"], e["key"]) for e in events] == [
        ("step.started", step),
        ("step.completed", step),
    ]
    assert {e["payload"]["session_id"] for e in events} == {one}  # type: ignore[index]
    assert "Traceback" not in ran.stderr

    typed = tail(
        "--from-beginning",
        "--session",
        one,
        "--type",
        "step.comp*",
        "--topic",
        "wflo.steps",
        "--idle",
        "2",
        home=tmp_path,
        bootstrap=kafka_bootstrap,
    )
    assert typed.returncode == 0, typed.stderr
    assert [e["type"] for e in _lines(typed.stdout)] == ["step.completed"]


def test_n_stops_and_a_named_group_resumes_where_it_stopped(
    two_sessions: tuple[str, str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    one, _, _ = two_sessions
    group = f"tail-test-{uuid.uuid4().hex[:8]}"
    args = ("--from-beginning", "--group", group, "--session", one)
    # -n 1 without --idle: it stops by itself after one event (else the run times out)
    first = tail(*args, "-n", "1", home=tmp_path, bootstrap=kafka_bootstrap, timeout=90)
    assert first.returncode == 0, first.stderr
    assert [e["type"] for e in _lines(first.stdout)] == ["step.started"]
    # the group committed what the first run read: the second run goes on from there
    second = tail(*args, "--idle", "2", home=tmp_path, bootstrap=kafka_bootstrap)
    assert [e["type"] for e in _lines(second.stdout)] == ["step.completed"]


def test_a_terminal_gets_readable_lines_and_ctrl_c_exits_quietly(
    two_sessions: tuple[str, str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    one, _, step = two_sessions
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*TAIL, "--from-beginning", "--session", one],
        env=_env(tmp_path, kafka_bootstrap),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    screen = b""
    try:
        deadline = time.monotonic() + 90
        while b"step.completed" not in screen and time.monotonic() < deadline:
            try:
                screen += os.read(controller, 65536)
            except OSError:  # the terminal closed: the process ended
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = screen.decode(errors="replace")
    assert "step.completed" in text and "step.started" in text
    assert f"session {one[:8]}" in text and f"step {step[:8]}" in text
    assert "name=tail-one" in text
    assert "{" not in text  # not JSON
    assert process.returncode == 0
    assert b"Traceback" not in stderr and b"KeyboardInterrupt" not in stderr


def test_an_empty_group_is_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    ran = tail("--group", "", home=tmp_path, bootstrap=kafka_bootstrap)
    assert ran.returncode == 2
    assert (
        ran.stderr.strip() == "error: Kafka consumer: group.id is required (a consumer group name)"
    )


def test_no_broker_is_one_line(tmp_path: Path) -> None:
    ran = tail("--idle", "1", home=tmp_path, bootstrap="127.0.0.1:1")
    assert ran.returncode == 1
    (line,) = [x for x in ran.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: Kafka at 127.0.0.1:1: ")
    assert "Traceback" not in ran.stderr


def test_no_kafka_configured_is_one_line(tmp_path: Path) -> None:
    ran = tail(home=tmp_path, bootstrap=None)
    assert ran.returncode == 2
    assert ran.stderr.strip() == (
        "error: no Kafka: set WFLO_KAFKA_BOOTSTRAP, or start the local broker with "
        "`wflo up --with-kafka`"
    )
