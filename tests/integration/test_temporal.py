"""``CellWorkflow`` on a real Temporal server, with the real ledger and Docker sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker
import pytest

from wflo_jupyter.core.steps import StepInput
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.orchestration.activities import StepActivities
from wflo_jupyter.orchestration.loop import BackgroundLoop
from wflo_jupyter.orchestration.stepio import StepIO, StepIORegistry
from wflo_jupyter.orchestration.worker import StepRunner
from wflo_jupyter.sandbox.session import SandboxSession

Env = tuple[StepRunner, Ledger, str, StepIORegistry]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.temporal,
    pytest.mark.docker,
    pytest.mark.postgres,
]


@pytest.fixture
def env(
    fresh_database_url: str,
    temporal_address: str,
    docker_client: docker.DockerClient,
    runtime_image: str,
) -> Iterator[tuple[StepRunner, Ledger, str, StepIORegistry]]:
    session_id = str(uuid.uuid4())
    ledger = Ledger.connect(fresh_database_url)
    ledger.open_session(session_id)
    loop = BackgroundLoop()
    sandbox = SandboxSession(docker_client, session_id, image=runtime_image)
    fresh_images: dict[str, SandboxSession] = {}

    def sandbox_for(image: str) -> SandboxSession:
        if image == runtime_image:
            return sandbox
        return fresh_images.setdefault(
            image, SandboxSession(docker_client, session_id, image=image)
        )

    registry = StepIORegistry()
    activities = StepActivities(ledger, sandbox_for, registry)
    runner = StepRunner(loop, temporal_address, "default", f"test-{session_id}", activities)
    yield runner, ledger, session_id, registry
    runner.close()
    loop.stop()
    ledger.close()
    sandbox.close()
    for other in fresh_images.values():
        other.close()


def _step(session_id: str, code: str, image: str, **overrides: object) -> StepInput:
    fields: dict[str, object] = {
        "step_id": str(uuid.uuid4()),
        "session_id": session_id,
        "code": code,
        "name": "t",
        "timeout_s": 30.0,
        "memory_bytes": 256 * 1024**2,
        "cpus": 1.0,
        "pids_limit": 64,
        "image": image,
        "budget_micros": 100_000,
    }
    fields.update(overrides)
    return StepInput(**fields)  # type: ignore[arg-type]


def test_workflow_runs_code_and_records_the_step(env: Env, runtime_image: str) -> None:
    runner, ledger, session_id, registry = env
    step = _step(session_id, "print('from temporal')", runtime_image)
    io = registry.open(step.step_id, StepIO())
    result = runner.run(step, timeout_s=120)
    assert result.ok
    streamed = []
    while not io.events.empty():
        streamed.append(io.events.get_nowait())
    assert streamed == [("stream", "stdout", "from temporal\n")]
    assert result.workflow_id == f"wflo-step-{step.step_id}"
    assert runner.describe(result.workflow_id) == "COMPLETED"
    row = ledger.step(step.step_id)
    assert row is not None
    assert row.status == "completed"
    assert row.exit_code == 0
    assert row.budget_micros == 100_000  # the workflow carries the cell's budget
    assert row.workflow_id == result.workflow_id


def test_failing_code_fails_the_step_not_the_workflow(env: Env, runtime_image: str) -> None:
    runner, ledger, session_id, _registry = env
    step = _step(session_id, "raise ValueError('bad input')", runtime_image)
    result = runner.run(step, timeout_s=120)
    assert (result.status, result.error_name, result.error_value) == (
        "failed",
        "ValueError",
        "bad input",
    )
    assert runner.describe(result.workflow_id) == "COMPLETED"
    row = ledger.step(step.step_id)
    assert row is not None
    assert row.status == "failed"
    assert row.error == "ValueError: bad input"


def test_code_execution_with_timeout(env: Env, runtime_image: str) -> None:
    runner, ledger, session_id, _registry = env
    step = _step(session_id, "import time; time.sleep(120)", runtime_image, timeout_s=2.0)
    result = runner.run(step, timeout_s=120)
    assert result.exit_reason == "timeout"
    assert result.error_name == "TimeoutError"
    row = ledger.step(step.step_id)
    assert row is not None
    assert row.exit_reason == "timeout"


def test_retries_rerun_a_failing_cell(env: Env, runtime_image: str) -> None:
    runner, _ledger, session_id, _registry = env
    step = _step(session_id, "import random; raise SystemExit(1)", runtime_image, retries=2)
    result = runner.run(step, timeout_s=180)
    assert result.status == "failed"
    history_events = runner.loop.run(_count_activities(runner, result.workflow_id), 30)
    assert history_events["execute"] == 3


async def _count_activities(runner: StepRunner, workflow_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    async for event in runner.client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_missing_image_is_a_clear_step_failure(env: Env) -> None:
    runner, ledger, session_id, _registry = env
    step = _step(session_id, "print(1)", "wflo-missing:none")
    result = runner.run(step, timeout_s=120)
    assert result.exit_reason == "sandbox"
    assert "not found; build it with `wflo image build`" in result.error_value
    row = ledger.step(step.step_id)
    assert row is not None
    assert row.status == "failed"
