"""Interrupting a running ``%%wflo`` cell in a real kernel (the notebook's stop button):
the step's workflow ends CANCELED, the step is ``cancelled`` in the ledger with a
``step.cancelled`` event, an LLM call in flight is cut off upstream and its money
released at once, and the session goes on: with its namespace when the interrupt was
enough, in a new sandbox (said in one line) when the cell had to be killed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.fakes.providers import FakeProvider
from tests.helpers import wait_until, workflow_status
from tests.kernel_driver import Kernel
from tests.marks import LLM_KERNEL
from wflo_jupyter.ledger.store import Ledger

pytestmark = LLM_KERNEL

CANCELLED_LINE = "StepCancelled: the cell was interrupted; the sandbox and its state are kept"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module")
def kernel_env(fake: FakeProvider) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-host-secret", "WFLO_OPENAI_BASE_URL": fake.base_url}


def _held(ledger: Ledger, step_id: str) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT state FROM reservations WHERE step_id = :s ORDER BY created_at"),
                {"s": step_id},
            ).scalars()
        )


def test_interrupt_cancels_the_step_and_keeps_the_namespace(
    kernel: Kernel, ledger: Ledger, temporal_address: str
) -> None:
    session_id = kernel.wflo_session_id()
    code = "%%wflo --name interrupted\nimport time\nkept = 41\nprint('started', flush=True)\n"
    msg_id = kernel.submit(code + "time.sleep(120)\n")
    kernel.interrupt_once(msg_id, "started")
    run = kernel.collect(msg_id)
    assert run.status == "error"
    assert run.error_line == CANCELLED_LINE  # one line, no traceback
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr
    step = ledger.steps(session_id)[-1]
    assert (step.name, step.status, step.exit_reason) == ("interrupted", "cancelled", "interrupted")
    assert step.workflow_id.startswith(f"wflo-step-{kernel.wflo_session_id()}-")
    assert workflow_status(temporal_address, step.workflow_id) == "CANCELED"
    types = [e["type"] for e in ledger.recent_events(20, session_id) if e["key"] == step.id]
    assert types == ["step.started", "step.cancelled"]
    runs = kernel.run("%wflo runs")
    assert "cancelled" in runs.text
    report = kernel.run(
        "rows = get_ipython().find_magic('wflo').__self__.session.report_rows()\n"
        "print([r.status for r in rows if r.name == 'interrupted'])"
    )
    assert report.stdout == "['cancelled']\n"  # the cost report's row
    after = kernel.run("%%wflo\nprint(kept + 1)")
    assert after.status == "ok", after.error
    assert after.stdout == "42\n"


def test_interrupt_reaches_a_fresh_sandbox(kernel: Kernel, ledger: Ledger) -> None:
    msg_id = kernel.submit(
        "%%wflo --fresh --name fresh\nimport time\nprint('started', flush=True)\ntime.sleep(120)\n"
    )
    kernel.interrupt_once(msg_id, "started")
    run = kernel.collect(msg_id)
    assert run.error_line == CANCELLED_LINE
    step = ledger.steps(kernel.wflo_session_id())[-1]
    assert (step.name, step.status, step.exit_reason) == ("fresh", "cancelled", "interrupted")


def test_interrupt_cuts_off_an_llm_call_in_flight(
    kernel: Kernel, ledger: Ledger, fake: FakeProvider
) -> None:
    session_id = kernel.wflo_session_id()
    code = (
        "%%wflo --budget 0.10 --name slow-call --no-cache\n"
        "from openai import OpenAI\n"
        "OpenAI(max_retries=0).chat.completions.create(model='gpt-4o-mini', max_tokens=50,\n"
        "    messages=[{'role': 'user', 'content': 'take your time'}])\n"
    )
    fake.state.delay_s = 60.0
    try:
        before = len(fake.requests)
        msg_id = kernel.submit(code)
        wait_until(lambda: len(fake.requests) > before, 60, what="the call reached the fake")
        kernel.manager.interrupt_kernel()
        run = kernel.collect(msg_id)
        step = ledger.steps(session_id)[-1]
        held = _held(ledger, step.id)  # right after the cell's reply
    finally:
        fake.state.delay_s = 0.0
    assert run.error_line == CANCELLED_LINE
    assert step.status == "cancelled"
    assert held == ["released"]  # the call's reservation, freed at once (no lease wait)
    wait_until(lambda: fake.disconnects == 1, 10, what="the fake saw the client hang up")
    assert step.cost_micros == 0  # nothing was settled: the provider never answered


def test_a_cell_that_ignores_the_interrupt_is_killed(kernel: Kernel, ledger: Ledger) -> None:
    kernel.run("%%wflo\nbefore = 1")
    code = (
        "%%wflo --name stubborn\n"
        "import time\n"
        "print('started', flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n"
        "        pass\n"
    )
    msg_id = kernel.submit(code)
    kernel.interrupt_once(msg_id, "started")
    run = kernel.collect(msg_id)
    assert run.error_line == (
        "StepCancelled: the cell did not stop when interrupted, so its sandbox was killed; "
        "state was lost"
    )
    step = ledger.steps(kernel.wflo_session_id())[-1]
    assert (step.name, step.status, step.exit_reason) == ("stubborn", "cancelled", "killed")
    after = kernel.run("%%wflo\nprint('before' in dir())")
    assert after.status == "ok", after.error
    assert after.stdout == "False\n"
