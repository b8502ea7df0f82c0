"""The server-kill drill: the Temporal dev server is SIGKILLed while a ``%%wflo`` cell
runs and started again on the same port and database. The cell ends (completed, or one
clear failure line), the ledger row agrees with the workflow's status on the restarted
server, no reservation is left held, and the next cell in the same kernel works: on the
lean path (one local activity) and on the full path (``--retries 1``).

The server is this module's own (``temporal server start-dev`` as the local stack plans
it, with its history in a sqlite file that survives the kill); the other engines are the
suite's."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import wait_until, workflow_status
from tests.kernel_driver import Kernel, loaded_kernel
from tests.marks import KERNEL
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.stack.engines import EngineInfo
from wflo_jupyter.stack.health import health
from wflo_jupyter.stack.plans import EnginePlans, Plan

pytestmark = KERNEL

# the ledger's status of a step for each status of its workflow
AGREES = {"COMPLETED": {"completed", "failed"}, "FAILED": {"failed"}, "CANCELED": {"cancelled"}}
NOISE = ("Traceback", "\x1b[", "WARN", "panicked")


class DrillServer:
    """A Temporal dev server that can be SIGKILLed and started again as it was."""

    def __init__(self, home: Path) -> None:
        self.plan: Plan = EnginePlans(home, home, lambda _line: None).plan("temporal")
        self.log = home / "temporal.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> str:
        return self.plan.url

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.plan.argv, cwd=self.plan.cwd, stdout=log, stderr=log, start_new_session=True
            )
        info = EngineInfo("temporal", self.plan.url, self.process.pid, self.plan.extra)
        wait_until(lambda: health(info) is None, 60, interval=0.1, what="the drill's server")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL  # it died of the kill, not before
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillServer]:
    drill = DrillServer(tmp_path_factory.mktemp("temporal-drill"))
    yield drill
    drill.stop()


@pytest.fixture(scope="module")
def drill_kernel(
    stack_env: dict[str, str], runtime_image: str, server: DrillServer
) -> Iterator[Kernel]:
    with loaded_kernel({"WFLO_TEMPORAL_ADDRESS": server.address}) as kernel:
        yield kernel


def _held(ledger: Ledger, step_ids: list[str]) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id FROM reservations WHERE step_id = ANY(:s) AND state = 'held'"),
                {"s": step_ids},
            ).scalars()
        )


@pytest.mark.parametrize(
    ("flags", "outage_s"),
    [("", 2.0), ("--retries 1", 2.0), ("", 15.0)],
    ids=["lean", "full", "lean-long-outage"],
)
def test_a_killed_server_leaves_the_step_and_the_session_whole(
    drill_kernel: Kernel, server: DrillServer, ledger: Ledger, flags: str, outage_s: float
) -> None:
    """A long outage outlasts the client's own retries (about 10 s) and loses the
    workflow task that carried the lean path's result: the cell still ends once, with
    its output once."""
    kernel = drill_kernel
    session_id = kernel.wflo_session_id()
    name = f"drill{'-full' if flags else ''}"
    msg_id = kernel.submit(
        f"%%wflo {flags} --name {name}\n"
        "import time\nprint('started', flush=True)\ntime.sleep(4)\nprint('slept')\n"
    )
    seen = ""
    while "started" not in seen:
        msg = kernel.client.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
    time.sleep(1.0)
    server.kill()
    time.sleep(outage_s)
    server.start()
    run = kernel.collect(msg_id, timeout=120)

    output = run.stdout + run.stderr + run.text + run.error_line
    for noise in NOISE:
        assert noise not in output, output
    if run.status == "ok":
        assert run.stdout == "slept\n"
    else:
        assert run.error_line and "\n" not in run.error_line, run.error_line
    step = ledger.steps(session_id)[-1]
    assert step.name == name
    assert step.status != "running"
    assert step.workflow_id
    status = wait_until(
        lambda: (s := workflow_status(server.address, step.workflow_id)) != "RUNNING" and s,
        60,
        what="the workflow to end on the restarted server",
    )
    assert step.status in AGREES[status], (status, step.status, step.error)
    assert (run.status == "ok") == (step.status == "completed")
    assert _held(ledger, [s.id for s in ledger.steps(session_id)]) == []

    after = kernel.run(f"%%wflo {flags}\nprint('next cell')")
    assert after.status == "ok", after.error
    assert after.stdout == "next cell\n"
    following = ledger.steps(session_id)[-1]
    assert following.status == "completed"
    assert workflow_status(server.address, following.workflow_id) == "COMPLETED"
