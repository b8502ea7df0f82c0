"""``CellWorkflow`` on a real Temporal server, with the real ledger and Docker sandbox."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import docker
import pytest
from temporalio.api.enums.v1 import TimeoutType

from tests.helpers import wait_until
from wflo_jupyter.core.steps import StepInput
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.orchestration.activities import StepActivities
from wflo_jupyter.orchestration.loop import BackgroundLoop
from wflo_jupyter.orchestration.stepio import StepIO, StepIORegistry
from wflo_jupyter.orchestration.worker import CancelledStep, StepRunner
from wflo_jupyter.orchestration.workflows import EXECUTE_HEARTBEAT
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

    def sandbox_for(image: str, _session_id: str) -> SandboxSession:
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


def test_a_user_error_is_never_retried(env: Env, runtime_image: str) -> None:
    runner, _ledger, session_id, _registry = env
    step = _step(session_id, "raise ValueError('user bug')", runtime_image, retries=3)
    result = runner.run(step, timeout_s=180)
    assert (result.status, result.error_name, result.attempts) == ("failed", "ValueError", 1)
    attempts = runner.loop.run(_execute_attempts(runner, result.workflow_id), 30)
    assert attempts == [(1, "")]  # scheduled once, started once, on its first attempt


def test_a_lost_heartbeat_is_retried(env: Env, runtime_image: str) -> None:
    """The first attempt stops heartbeating (its worker thread hangs before the cell):
    the server's heartbeat timeout fails it and ``--retries 1`` runs the cell again."""
    runner, _ledger, session_id, registry = env
    assert runner.run(_step(session_id, "kept = 'ran'", runtime_image), timeout_s=120).ok
    step = _step(session_id, "print(kept)", runtime_image, retries=1)
    io = registry.open(step.step_id, StepIO())
    calls: list[int] = []

    def hang_first(_step: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(EXECUTE_HEARTBEAT.total_seconds() + 2)

    io.before_run = hang_first
    result = runner.run(step, timeout_s=120)
    assert (result.status, result.attempts) == ("completed", 2)
    attempts = runner.loop.run(_execute_attempts(runner, result.workflow_id), 30)
    assert attempts == [(2, "TIMEOUT_TYPE_HEARTBEAT")]
    events = _drain(io)
    assert ("stream", "stdout", "ran\n") in events  # once: the hung attempt gave way
    assert [e for e in events if e[0] == "stream"] == [("stream", "stdout", "ran\n")]
    notices = [e[1] for e in events if e[0] == "notice"]
    assert notices == [
        "retry: attempt 2 of 2 after an infrastructure failure; the sandbox and its state were kept"
    ]


def test_a_lost_heartbeat_without_retries_fails_the_step(env: Env, runtime_image: str) -> None:
    runner, ledger, session_id, registry = env
    step = _step(session_id, "print('must not run')", runtime_image)
    io = registry.open(step.step_id, StepIO())
    woke = threading.Event()

    def hang(_step: object) -> None:
        time.sleep(EXECUTE_HEARTBEAT.total_seconds() + 2)
        woke.set()

    io.before_run = hang
    result = runner.run(step, timeout_s=120)
    assert (result.status, result.error_name, result.attempts) == ("failed", "WorkerLost", 1)
    assert result.error_value == "the worker running the cell stopped heartbeating for 5 s"
    row = ledger.step(step.step_id)
    assert row is not None
    assert row.error == f"WorkerLost: {result.error_value}"
    assert woke.wait(30)
    # a cell after it runs in the same sandbox, after anything the late attempt ran there
    assert runner.run(_step(session_id, "pass", runtime_image), timeout_s=120).ok
    assert [e for e in _drain(io) if e[0] == "stream"] == []  # the late attempt gave way


def test_a_sandbox_that_would_not_start_is_retried(
    env: Env, runtime_image: str, docker_client: docker.DockerClient
) -> None:
    """The first attempt finds no image (the sandbox cannot start); before the retry the
    image appears, and ``--retries 1`` runs the cell in a new sandbox."""
    runner, _ledger, session_id, registry = env
    image = f"wflo-retry-{uuid.uuid4().hex[:8]}:test"
    step = _step(session_id, "print('second try')", image, retries=1)
    io = registry.open(step.step_id, StepIO())
    calls: list[int] = []

    def image_appears(_step: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            docker_client.images.get(runtime_image).tag(image)

    io.before_run = image_appears
    try:
        result = runner.run(step, timeout_s=120)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image, noprune=True)
    assert (result.status, result.attempts) == ("completed", 2)
    events = _drain(io)
    assert ("stream", "stdout", "second try\n") in events
    assert (
        "notice",
        "retry: attempt 2 of 2 after an infrastructure failure; the cell ran in a new sandbox",
        None,
    ) in events


def test_the_same_workflow_id_runs_once(env: Env, runtime_image: str) -> None:
    runner, ledger, session_id, registry = env
    step = _step(session_id, "print('once')", runtime_image, execution_count=7)
    assert step.workflow_id == f"wflo-step-{session_id}-7-1"
    io = registry.open(step.step_id, StepIO())
    runs: list[int] = []
    io.before_run = lambda _step: runs.append(1)
    first, again = runner.submit(step), runner.submit(step)  # a start sent twice
    results = [runner.result(first, 120), runner.result(again, 120)]
    late = runner.result(runner.submit(step), 120)  # and once more after it ended
    assert [r.workflow_id for r in (*results, late)] == [step.workflow_id] * 3
    assert all(r.ok for r in (*results, late))
    assert runs == [1]  # the cell ran once
    assert [e for e in _drain(io) if e[0] == "stream"] == [("stream", "stdout", "once\n")]
    assert [row.id for row in ledger.steps(session_id)] == [step.step_id]


def test_cancelling_the_workflow_interrupts_the_cell(env: Env, runtime_image: str) -> None:
    """Temporal's cancel alone (no kernel): the heartbeat hears it, the cell is
    interrupted, the step is ``cancelled``, the workflow CANCELED, the state kept."""
    runner, ledger, session_id, registry = env
    code = "import time\nkept = 41\nprint('started', flush=True)\ntime.sleep(60)"
    step = _step(session_id, code, runtime_image)
    io = registry.open(step.step_id, StepIO())
    future = runner.submit(step)
    events: list[object] = []
    wait_until(lambda: events.extend(_drain(io)) or ("stream", "stdout", "started\n") in events)
    runner.cancel(step.workflow_id).result(30)
    with pytest.raises(CancelledStep):
        runner.result(future, 120)
    assert runner.describe(step.workflow_id) == "CANCELED"
    row = ledger.step(step.step_id)
    assert row is not None
    assert (row.status, row.exit_reason) == ("cancelled", "interrupted")
    types = [e["type"] for e in ledger.recent_events(10, session_id)]
    assert "step.cancelled" in types and "step.failed" not in types
    after = _step(session_id, "print(kept + 1)", runtime_image)
    after_io = registry.open(after.step_id, StepIO())
    assert runner.run(after, timeout_s=120).ok
    assert ("stream", "stdout", "42\n") in _drain(after_io)


def _drain(io: StepIO) -> list[tuple[object, ...]]:
    events = []
    while not io.events.empty():
        events.append(io.events.get_nowait())
    return events


async def _execute_attempts(runner: StepRunner, workflow_id: str) -> list[tuple[int, str]]:
    """(attempt, the previous attempt's timeout type) of each started ``execute``."""
    scheduled: set[int] = set()
    started: list[tuple[int, str]] = []
    async for event in runner.client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name == "execute":
                scheduled.add(event.event_id)
        elif event.HasField("activity_task_started_event_attributes"):
            attributes = event.activity_task_started_event_attributes
            if attributes.scheduled_event_id in scheduled:
                failure = attributes.last_failure
                timeout = (
                    TimeoutType.Name(failure.timeout_failure_info.timeout_type)
                    if failure.HasField("timeout_failure_info")
                    else ""
                )
                started.append((attributes.attempt, timeout))
    return started


def test_missing_image_is_a_clear_step_failure(env: Env) -> None:
    runner, ledger, session_id, _registry = env
    step = _step(session_id, "print(1)", "wflo-missing:none")
    result = runner.run(step, timeout_s=120)
    assert result.exit_reason == "sandbox"
    assert "not found; build it with `wflo image build`" in result.error_value
    row = ledger.step(step.step_id)
    assert row is not None
    assert row.status == "failed"
