"""The "wflo runs" panel's Cancel button, end to end in a real JupyterLab and browser: a
long ``%%wflo`` cell shows as running with a Cancel button; a click asks the server
extension, which asks Temporal; the kernel's worker stops the cell; the cell ends in the
one ``StepCancelled`` line, the ledger and the panel say ``cancelled``, the workflow is
CANCELED, and the next cell runs with the sandbox's state kept."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from temporalio.client import Client

from tests.marks import LLM_KERNEL
from tests.ui.lab import ARTIFACTS, KERNEL_READY, Lab, chromium, running_lab, write_notebook
from wflo_jupyter.ledger.notebooks import NotebookStep, notebook_steps
from wflo_jupyter.server.paths import ledger_keys

pytestmark = [pytest.mark.ui, *LLM_KERNEL]

NOTEBOOK = f"cancel-{uuid.uuid4().hex[:8]}.ipynb"
CELLS = [
    "%load_ext wflo_jupyter",
    "%%wflo --name sleeper\nimport time\nkept = 41\nfor _ in range(1000):\n    time.sleep(0.05)",
    "%%wflo --name after\nprint('after', kept + 1)",
]
PANEL = "#wflo-runs"


def _steps(lab: Lab) -> list[NotebookStep]:
    engine = create_engine(lab.kernel_env["WFLO_DATABASE_URL"])
    try:
        return notebook_steps(engine, ledger_keys(NOTEBOOK, [str(lab.root)]), 100)
    finally:
        engine.dispose()


def _workflow_status(address: str, workflow_id: str) -> str:
    async def describe() -> str:
        client = await Client.connect(address)
        description = await client.get_workflow_handle(workflow_id).describe()
        return description.status.name if description.status else "UNKNOWN"

    return asyncio.run(describe())


@pytest.fixture(scope="module")
def lab(
    stack_env: dict[str, str], runtime_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab-cancel")
    write_notebook(root / NOTEBOOK, CELLS)
    with running_lab(root, stack_env) as lab:
        lab.start_session(NOTEBOOK)
        yield lab


def test_the_panels_cancel_button_cancels_a_running_step(lab: Lab) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "lab-cancel.png"
    with chromium() as browser:
        page: Any = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(lab.url(NOTEBOOK))
        page.wait_for_function(KERNEL_READY, timeout=90_000)
        page.evaluate("window.jupyterapp.commands.execute('wflo-jupyter:open-runs')")
        # not awaited: the command's promise resolves only when every cell has run
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        button = page.locator(f"{PANEL} .wflo-Step[data-status='running'] .wflo-Step-cancel")
        try:
            button.wait_for(state="visible", timeout=60_000)
            assert button.inner_text() == "Cancel"
            assert button.get_attribute("aria-label") == "Cancel step sleeper"
            button.click()
            # the cell ends in one line (which, like any error, stops "run all"); the next
            # cell, run on its own, finds the state kept
            page.wait_for_function(
                "() => document.body.innerText.includes('StepCancelled')", timeout=30_000
            )
            # once idle: a request sent while the kernel still ends the failed cell is
            # aborted, as ipykernel aborts what was queued behind an error
            page.wait_for_function(KERNEL_READY, timeout=30_000)
            page.locator(".jp-CodeCell .jp-InputArea-editor").nth(2).click()
            page.keyboard.press("Shift+Enter")
            page.wait_for_function(
                "() => document.body.innerText.includes('after 42')", timeout=60_000
            )
        except Exception:
            page.screenshot(path=str(shot), full_page=True)
            raise
        outputs = page.locator(".jp-CodeCell .jp-OutputArea").all_inner_texts()
        assert (
            "StepCancelled: the cell was interrupted; the sandbox and its state are kept"
            in (outputs[1])
        )
        assert "Traceback" not in outputs[1]
        row = page.locator(f"{PANEL} .wflo-Step", has_text="sleeper")
        row.locator(".wflo-Status-cancelled").wait_for(state="visible", timeout=10_000)
        # no step is running any more (the panel refetches as the events arrive)
        page.wait_for_function(
            f"() => document.querySelectorAll('{PANEL} .wflo-Step-cancel').length === 0",
            timeout=10_000,
        )
        page.screenshot(path=str(shot))
    steps = {step.name: step for step in _steps(lab)}
    assert (steps["sleeper"].status, steps["after"].status) == ("cancelled", "completed")
    workflow_id = steps["sleeper"].workflow_id
    assert workflow_id
    deadline = time.monotonic() + 10
    while (status := _workflow_status(lab.kernel_env["WFLO_TEMPORAL_ADDRESS"], workflow_id)) != (
        "CANCELED"
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == "CANCELED"
