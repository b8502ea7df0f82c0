"""The ``wflo`` command line against real engines: up / up / status / down, migrate,
report, and one-line errors for bad settings."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.helpers import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.temporal,
    pytest.mark.kafka,
]

WFLO = [sys.executable, "-m", "wflo_jupyter.cli"]


def wflo(
    *args: str, home: Path, extra_env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_HOME": str(home), "COLUMNS": "200"})
    env.update(extra_env or {})
    return subprocess.run(
        [*WFLO, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_up_up_status_down(tmp_path: Path) -> None:
    first = wflo("up", "--with-kafka", home=tmp_path)
    assert first.returncode == 0, first.stderr
    state = json.loads((tmp_path / "stack.json").read_text())["engines"]
    pids = {name: info["pid"] for name, info in state.items()}
    assert set(pids) == {"postgres", "redis", "temporal", "kafka"}
    try:
        second = wflo("up", "--with-kafka", home=tmp_path)
        assert second.returncode == 0, second.stderr
        again = json.loads((tmp_path / "stack.json").read_text())["engines"]
        assert {n: i["pid"] for n, i in again.items()} == pids  # reused, not restarted

        status = wflo("status", home=tmp_path)
        assert status.returncode == 0, status.stderr
        for name, pid in pids.items():
            line = next(row for row in status.stdout.splitlines() if f" {name} " in row)
            assert str(pid) in line
            assert "yes" in line

        migrate = wflo("migrate", home=tmp_path)
        assert migrate.returncode == 0, migrate.stderr
        assert "ledger at revision 0008_envelope_v2" in migrate.stdout

        report = wflo("report", home=tmp_path)
        assert report.returncode == 0, report.stderr
        assert "0 steps" in report.stdout
    finally:
        down = wflo("down", home=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "stopped:" in down.stdout
    wait_until(
        lambda: not [n for n, p in pids.items() if _alive(p)],
        30,
        interval=0.05,
        what="every engine process to end",
    )
    after = wflo("status", home=tmp_path)
    assert after.stdout.count("not running") == 4


def test_down_with_nothing_running(tmp_path: Path) -> None:
    result = wflo("down", home=tmp_path)
    assert result.returncode == 0
    assert "nothing was running" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [("WFLO_DATABASE_URL", "notaurl"), ("WFLO_TEMPORAL_ADDRESS", "nohost")],
)
def test_bad_setting_is_one_line(tmp_path: Path, variable: str, value: str) -> None:
    result = wflo("status", home=tmp_path, extra_env={variable: value})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {variable}:")


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = wflo(
        "migrate",
        home=tmp_path,
        extra_env={
            "WFLO_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/wflo",
            "WFLO_REDIS_URL": "redis://127.0.0.1:1/0",
            "WFLO_TEMPORAL_ADDRESS": "127.0.0.1:1",
        },
    )
    assert result.returncode == 1
    assert "error: PostgreSQL at" in result.stderr
    assert "Traceback" not in result.stderr


def test_events_tail_prints_relayed_events(stack_env: dict[str, str], tmp_path: Path) -> None:
    import uuid

    from tests.helpers import start_step
    from wflo_jupyter.events import OutboxRelay
    from wflo_jupyter.ledger.store import Ledger

    ledger = Ledger.connect(stack_env["WFLO_DATABASE_URL"])
    try:
        _, step_id = start_step(ledger, name=f"tail-{uuid.uuid4().hex[:6]}")
        relay = OutboxRelay(ledger, stack_env["WFLO_KAFKA_BOOTSTRAP"])
        relay.relay_once()
        relay.stop()
    finally:
        ledger.close()
    env = {k: v for k, v in stack_env.items() if k != "WFLO_HOME"}
    result = wflo(
        "events",
        "tail",
        "--from-beginning",
        "--idle",
        "5",
        home=tmp_path,
        extra_env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any(e["key"] == step_id and e["type"] == "step.started" for e in lines)


@pytest.mark.docker
def test_sandbox_prune_removes_orphans_of_dead_kernels(
    tmp_path: Path, docker_client: docker.DockerClient, runtime_image: str
) -> None:
    # A container labelled as belonging to a kernel pid that no longer exists.
    dead = subprocess.Popen(["true"])
    dead.wait()
    container = docker_client.containers.create(
        runtime_image,
        ["sleep", "300"],
        labels={
            "org.wflo.session": "orphan-test",
            "org.wflo.kernel-pid": str(dead.pid),
            "org.wflo.created": "2026-01-01T00:00:00+00:00",
        },
    )
    try:
        result = wflo("sandbox", "prune", home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "removed" in result.stdout and container.id[:12] in result.stdout
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(container.id)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def test_report_writes_csv_and_json(stack_env: dict[str, str], tmp_path: Path) -> None:
    from tests.helpers import start_step
    from wflo_jupyter.core.steps import StepResult
    from wflo_jupyter.ledger.store import Ledger

    ledger = Ledger.connect(stack_env["WFLO_DATABASE_URL"])
    try:
        session_id, step_id = start_step(ledger, name="reported-step")
        ledger.finish_step(
            StepResult(step_id=step_id, status="completed", exit_code=0, exit_reason="ok")
        )
    finally:
        ledger.close()
    env = {k: v for k, v in stack_env.items() if k != "WFLO_HOME"}
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    result = wflo(
        "report",
        "--session",
        session_id,
        "--csv",
        str(csv_path),
        "--json",
        str(json_path),
        home=tmp_path,
        extra_env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "reported-step" in result.stdout and "1 steps" in result.stdout
    (row,) = json.loads(json_path.read_text())
    assert row["step_id"] == step_id and row["cost_micros"] == 0 and row["cost_usd"] == "0"
    header = csv_path.read_text().splitlines()[0].split(",")
    assert {"step_id", "name", "cost_micros", "saved_micros", "input_tokens"} <= set(header)
