"""The walking skeleton in a real kernel: a ``%%wflo`` cell through Temporal, Docker,
Postgres and Kafka, plus bad input that leaves the kernel alive."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.kernel_driver import Kernel
from tests.marks import KERNEL
from wflo_jupyter.events import EventConsumer
from wflo_jupyter.ledger.store import Ledger

pytestmark = [*KERNEL, pytest.mark.kafka]

SANDBOX_PROBE = """%%wflo --budget 0.10 --timeout 30
import os, socket, pathlib
print("uid", os.getuid())
print("interfaces", sorted(n for _, n in socket.if_nameindex()))
print("dockerenv", pathlib.Path("/.dockerenv").exists())
try:
    pathlib.Path("/etc/wflo").write_text("x")
    print("etc writable")
except OSError:
    print("etc read-only")
"""


def test_cell_runs_in_the_sandbox(kernel: Kernel) -> None:
    run = kernel.run(SANDBOX_PROBE)
    assert run.status == "ok", run.error
    assert run.stdout.splitlines() == [
        "uid 1000",
        "interfaces ['lo']",
        "dockerenv True",
        "etc read-only",
    ]


def test_step_is_recorded_evented_and_durable(
    kernel: Kernel, database_url: str, kafka_bootstrap: str
) -> None:
    marker = uuid.uuid4().hex
    run = kernel.run(f"%%wflo --name recorded-{marker}\nprint('{marker}')")
    assert run.stdout == f"{marker}\n"
    session_id = kernel.wflo_session_id()
    ledger = Ledger.connect(database_url)
    try:
        (step,) = [s for s in ledger.steps(session_id) if s.name == f"recorded-{marker}"]
    finally:
        ledger.close()
    assert step.status == "completed"
    assert step.exit_code == 0
    assert step.duration_ms is not None
    assert step.sandbox_ms is not None
    with EventConsumer(kafka_bootstrap, f"test-{marker}", ["wflo.steps"]) as consumer:
        event = consumer.wait_for(
            lambda e: e.key == step.id and e.type == "step.completed", timeout_s=60
        )
    assert event.payload["name"] == f"recorded-{marker}"
    described = kernel.run(
        "m = get_ipython().find_magic('wflo').__self__\n"
        f"print(m.session.runner.describe({step.workflow_id!r}))"
    )
    assert described.stdout.strip() == "COMPLETED"


def test_raising_cell_shows_sandbox_traceback_and_kernel_carries_on(kernel: Kernel) -> None:
    run = kernel.run("%%wflo\ndef f():\n    return 1 / 0\nf()\n")
    assert run.status == "error"
    assert "Traceback (most recent call last)" in run.stderr
    assert "ZeroDivisionError: division by zero" in run.stderr
    assert run.error is not None
    assert run.error["ename"] == "StepFailed"
    assert run.error["evalue"] == "ZeroDivisionError: division by zero (in the sandbox)"
    # the host-side traceback is not dumped on the user: one line
    assert len(run.error["traceback"]) == 1
    after = kernel.run("%%wflo\nprint('still here')")
    assert after.stdout == "still here\n"


def test_runs_table_lists_steps(kernel: Kernel) -> None:
    run = kernel.run("%wflo runs")
    assert run.status == "ok"
    text = run.data[-1]["text/plain"]
    assert "completed" in text
    assert "failed" in text
    assert text.splitlines()[-1].startswith("workflows in the Temporal UI: http://127.0.0.1:")
    # each step's workflow id links to its page in the UI
    assert "/namespaces/default/workflows/wflo-step-" in run.data[-1]["text/html"]


def test_status_names_every_engine(kernel: Kernel) -> None:
    run = kernel.run("%wflo status")
    rows = [line.split()[0] for line in run.data[-1]["text/plain"].splitlines()[2:]]
    assert {"postgres", "temporal", "redis", "kafka", "docker", "image"} <= set(rows), rows


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%wflo --bogus\nprint(1)", "UsageError: %%wflo: unrecognized arguments: --bogus"),
        (
            "%%wflo --budget -0.5\nprint(1)",
            "UsageError: --budget: a budget cannot be negative: '-0.5'",
        ),
        ("%%wflo --timeout 0\nprint(1)", "UsageError: --timeout: must be a positive number"),
        ("%wflo frobnicate", "UsageError: %wflo: unknown command 'frobnicate'"),
    ],
)
def test_bad_options_are_one_line_usage_errors(kernel: Kernel, cell: str, message: str) -> None:
    run = kernel.run(cell)
    assert run.status == "error"
    combined = run.stderr + run.error_line
    assert message in combined
    assert kernel.alive()


def test_config_traits_set_defaults(kernel: Kernel) -> None:
    kernel.run("%config WfloMagics.timeout = 1.5")
    try:
        run = kernel.run("%%wflo\nimport time; time.sleep(30)")
        assert run.error is not None
        assert (
            "TimeoutError: the cell ran longer than 1.5 s and was interrupted"
            in run.error["evalue"]
        )
    finally:
        kernel.run("%config WfloMagics.timeout = 60.0")


def test_bad_url_is_one_line_usage_error(make_kernel: Callable[..., Kernel]) -> None:
    k = make_kernel({"WFLO_DATABASE_URL": "notaurl"}, load=False)
    k.run("%load_ext wflo_jupyter")
    run = k.run("%%wflo\nprint(1)")
    assert run.status == "error"
    text = run.stderr + run.error_line
    assert "UsageError: WFLO_DATABASE_URL: 'notaurl' is not a postgresql:// URL" in text
    assert k.alive()


def test_events_lists_this_sessions_events(kernel: Kernel) -> None:
    marker = uuid.uuid4().hex[:8]
    kernel.run(f"%%wflo --name ev-{marker}\nprint(1)")
    run = kernel.run("%wflo events -n 4")
    assert run.status == "ok", run.stderr
    text = run.data[-1]["text/plain"]
    assert "step.started" in text
    assert "step.completed" in text
    assert f"name=ev-{marker}" in text
    assert "on Kafka" in text  # the footer: which of them are not on Kafka yet, if any
    bad = kernel.run("%wflo events -n 0")
    assert "UsageError: %wflo events: argument -n: must be positive, got 0" in bad.stderr
