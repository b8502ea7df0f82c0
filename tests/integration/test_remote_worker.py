"""``wflo worker --task-queue Q`` as a second process with its own ``WFLO_HOME`` and its
own provider key: a ``%%wflo --queue Q`` cell runs in that worker's sandbox (the
container carries the worker's pid), its output streams back to the cell while it runs,
state persists across cells, an LLM call goes through the worker's gateway with the
worker's key and is recorded in the shared ledger, an interrupt in the notebook cancels
the step there, and SIGTERM stops the worker cleanly."""

from __future__ import annotations

import base64
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.fakes.providers import FakeProvider
from tests.helpers import wait_until, workflow_status
from tests.kernel_driver import Kernel
from tests.marks import LLM_KERNEL
from wflo_jupyter.ledger.store import Ledger

pytestmark = LLM_KERNEL

QUEUE = f"test-remote-{uuid.uuid4().hex[:8]}"
WFLO = str(Path(sys.executable).with_name("wflo"))
SESSION_LABEL = "org.wflo.session"
PID_LABEL = "org.wflo.kernel-pid"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module")
def kernel_env() -> dict[str, str]:
    # the notebook's kernel has no provider key: the worker's host has it
    return {"OPENAI_API_KEY": "", "WFLO_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}


@pytest.fixture(scope="module")
def worker(
    stack_env: dict[str, str],
    runtime_image: str,
    fake: FakeProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[subprocess.Popen[str]]:
    home = tmp_path_factory.mktemp("worker-home")
    env = {
        **os.environ,
        "WFLO_HOME": str(home),
        "OPENAI_API_KEY": "sk-worker-host-key",
        "WFLO_OPENAI_BASE_URL": fake.base_url,
    }
    process = subprocess.Popen(
        [WFLO, "worker", "--task-queue", QUEUE, "--graceful", "5"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "serving task queue" not in seen:
        line = process.stderr.readline()
        assert line or process.poll() is None, f"wflo worker exited: {seen}"
        seen += line
        assert time.monotonic() < deadline, f"wflo worker did not start: {seen}"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _worker_containers(
    client: docker.DockerClient, session_id: str, worker: subprocess.Popen[str]
) -> list[str]:
    """The session's containers the worker started (the kernel pre-warms its own too)."""
    found = client.containers.list(
        filters={"label": [f"{SESSION_LABEL}={session_id}", f"{PID_LABEL}={worker.pid}"]}
    )
    return [container.id[:12] for container in found]


def test_a_cell_on_a_worker_queue_runs_there_and_streams_its_output(
    kernel: Kernel,
    worker: subprocess.Popen[str],
    ledger: Ledger,
    docker_client: docker.DockerClient,
) -> None:
    session_id = kernel.wflo_session_id()
    run = kernel.run(
        f"%%wflo --queue {QUEUE} --name remote\n"
        "import socket, time\n"
        "print('first', flush=True)\n"
        "time.sleep(1.5)\n"
        "state = 41\n"
        "print('second', socket.gethostname())\n"
    )
    assert run.status == "ok", run.error
    containers = _worker_containers(docker_client, session_id, worker)
    assert len(containers) == 1
    assert run.stdout == f"first\nsecond {containers[0]}\n"  # it ran in the worker's sandbox
    (first_at, _, _), (second_at, _, _) = run.timeline[0], run.timeline[-1]
    assert second_at - first_at > 1.0  # 'first' reached the cell while the cell still ran
    step = ledger.steps(session_id)[-1]
    assert (step.name, step.status) == ("remote", "completed")

    started = [
        e["payload"]["sandbox_id"]
        for e in ledger.recent_events(100, session_id)
        if e["type"] == "sandbox.started"
    ]
    assert any(sandbox.startswith(containers[0]) for sandbox in started)  # the worker's

    again = kernel.run(f"%%wflo --queue {QUEUE}\nprint(state + 1)")
    assert again.status == "ok", again.error
    assert again.stdout == "42\n"  # the same sandbox: the session stayed on that worker
    assert _worker_containers(docker_client, session_id, worker) == containers


def test_an_llm_call_on_a_worker_uses_its_key_and_is_recorded(
    kernel: Kernel, worker: subprocess.Popen[str], ledger: Ledger, fake: FakeProvider
) -> None:
    session_id = kernel.wflo_session_id()
    before = len(fake.requests)
    run = kernel.run(
        f"%%wflo --queue {QUEUE} --budget 0.10 --name remote-call\n"
        "from openai import OpenAI\n"
        "answer = OpenAI(max_retries=0).chat.completions.create(model='gpt-4o-mini',\n"
        "    max_tokens=20, messages=[{'role': 'user', 'content': 'hello from afar'}])\n"
        "print(answer.usage.completion_tokens > 0)\n"
    )
    assert run.status == "ok", run.error
    assert run.stdout == "True\n"
    sent = fake.requests[before:]
    assert [r.headers.get("authorization") for r in sent] == ["Bearer sk-worker-host-key"]
    step = ledger.steps(session_id)[-1]
    assert (step.name, step.status) == ("remote-call", "completed")
    assert step.cost_micros > 0


def test_an_interrupt_cancels_the_step_on_the_worker(
    kernel: Kernel, worker: subprocess.Popen[str], ledger: Ledger, temporal_address: str
) -> None:
    session_id = kernel.wflo_session_id()
    msg_id = kernel.submit(
        f"%%wflo --queue {QUEUE} --name remote-sleeper\n"
        "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    )
    kernel.interrupt_once(msg_id, "started")
    run = kernel.collect(msg_id, timeout=60)
    assert run.status == "error"
    assert run.error_line.startswith("StepCancelled: ")
    step = ledger.steps(session_id)[-1]
    assert (step.name, step.status) == ("remote-sleeper", "cancelled")
    wait_until(
        lambda: workflow_status(temporal_address, step.workflow_id) == "CANCELED",
        10,
        what="the workflow CANCELED",
    )
    after = kernel.run(f"%%wflo --queue {QUEUE}\nprint('after', state)")
    assert after.status == "ok", after.error
    assert after.stdout == "after 41\n"


def test_in_and_out_values_travel_by_reference(
    kernel: Kernel, worker: subprocess.Popen[str]
) -> None:
    kernel.run("import numpy as np\nrows = {'xs': [1, 2, 3]}\narr = np.arange(4)")
    run = kernel.run(
        f"%%wflo --queue {QUEUE} --in rows,arr --out total,doubled\n"
        "total = sum(rows['xs'])\n"
        "doubled = arr * 2\n"
    )
    assert run.status == "ok", run.error
    check = kernel.run("print(total, doubled.tolist(), type(doubled).__name__)")
    assert check.stdout == "6 [0, 2, 4, 6] ndarray\n"


def test_a_forged_pickle_from_a_workers_sandbox_is_never_unpickled(
    kernel: Kernel, worker: subprocess.Popen[str], tmp_path: Path
) -> None:
    """The cell forges its agent's result frame with a pickled ``--out`` value that would
    create a file if it were ever loaded, on the worker or in the kernel."""
    marker = tmp_path / "pwned"

    class Pwn:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    evil = base64.b64encode(pickle.dumps(Pwn())).decode()
    run = kernel.run(
        f"%%wflo --queue {QUEUE} --out secret\n"
        "import gc, json, os, struct\n"
        "kernel = next(o for o in gc.get_objects() if type(o).__name__ == 'Kernel')\n"
        "fd = kernel.sender._sock.fileno()\n"
        f"evil = {{'format': 'pickle', 'type': 'dict', 'data': {evil!r}}}\n"
        "frame = {'type': 'result', 'id': kernel.current_id, 'ok': True, 'error': None,\n"
        "         'execution_count': 1, 'outputs': {'secret': evil}}\n"
        "body = json.dumps(frame).encode()\n"
        "os.write(fd, struct.pack('>I', len(body)) + body)\n"
    )
    shown = run.stdout + run.stderr + run.text + run.error_line
    assert "refused secret (dict): format 'pickle' is not a safe format" in shown
    assert not marker.exists()
    assert "secret" not in kernel.run("print(sorted(globals()))").stdout


def test_sigterm_stops_the_worker_cleanly(
    kernel: Kernel, worker: subprocess.Popen[str], docker_client: docker.DockerClient
) -> None:
    session_id = kernel.wflo_session_id()
    assert _worker_containers(docker_client, session_id, worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert worker.stderr is not None
    tail = worker.stderr.read()
    assert "wflo worker stopped" in tail
    assert "Traceback" not in tail and "panicked" not in tail
    assert _worker_containers(docker_client, session_id, worker) == []  # removed
