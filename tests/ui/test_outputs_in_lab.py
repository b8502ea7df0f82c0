"""The magics' outputs in a real JupyterLab, in a real browser (Debian's chromium driven by
Playwright): dollar amounts show as written (MathJax typesets none of them, while it does
typeset a control formula on the same page), and wflo's notices are quiet lines, not the
red stderr box.

One lab server and one notebook run for the module; each test reads the rendered page.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import REPO_ROOT
from tests.marks import LLM_KERNEL

pytestmark = [pytest.mark.ui, *LLM_KERNEL]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = uuid.uuid4().hex
MARKER = uuid.uuid4().hex[:8]
LLM_CELL = (
    "%%wflo --name twice\n"
    "from openai import OpenAI\n"
    "client = OpenAI()\n"
    "for _ in range(2):\n"
    "    reply = client.chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
    f"        messages=[{{'role': 'user', 'content': 'lab {MARKER}'}}])\n"
    "print('answered')\n"
)
CELLS = [
    "%load_ext wflo_jupyter",
    "%wflo budget 1",
    "%wflo status",
    LLM_CELL,
    "%wflo runs",
    "%wflo cache stats",
    "%wflo meter",
    "%wflo report",
    "from IPython.display import Markdown\nMarkdown('control: $x^2$')",
]
BUDGET, STATUS, LLM, RUNS, CACHE, METER, REPORT, CONTROL = range(1, 9)
STDERR_BOX = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
MATH = ".MathJax, mjx-container"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{base}{path}?token={TOKEN}",
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


@pytest.fixture(scope="module")
def lab(
    stack_env: dict[str, str], runtime_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A JupyterLab server (its kernels get the suite's engines and the mock provider)
    with the notebook written; yields its base URL."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    work = tmp_path_factory.mktemp("lab")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in CELLS]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(notebook, work / "outputs.ipynb")
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = {
        **os.environ,
        **stack_env,
        "WFLO_PROVIDER": "mock",
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_DATA_DIR": str(work / "data"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
    }
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    bin_dir = REPO_ROOT / ".venv" / "bin"
    jupyter = bin_dir / "jupyter" if (bin_dir / "jupyter").exists() else Path("jupyter")
    log = (work / "lab.log").open("w")
    server = subprocess.Popen(
        [
            str(jupyter),
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells by command
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _api(base, "/api")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (work / "lab.log").read_text())
                time.sleep(0.2)
        # a session made here: the page opens on a running kernel, no kernel picker
        _api(
            base,
            "/api/sessions",
            {"path": "outputs.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
        )
        yield base
    finally:
        server.terminate()  # the server shuts its kernels down; they close their sandboxes
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


@pytest.fixture(scope="module")
def page(lab: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The notebook run in chromium (Run All, once its kernel is connected and idle); a
    screenshot is saved beside the test's temporary files."""
    from playwright.sync_api import sync_playwright

    shot = tmp_path_factory.mktemp("shots") / "outputs.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1300, "height": 1900})
            tab.goto(f"{lab}/lab/tree/outputs.ipynb?token={TOKEN}&reset")
            tab.wait_for_function(KERNEL_READY, timeout=90_000)
            tab.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            prompts = tab.locator(".jp-CodeCell .jp-InputArea-prompt")
            deadline = time.monotonic() + 180
            while True:
                shown = [text.strip() for text in prompts.all_inner_texts()]
                if len(shown) == len(CELLS) and all(re.fullmatch(r"\[\d+\]:", t) for t in shown):
                    break
                if time.monotonic() > deadline:
                    tab.screenshot(path=str(shot), full_page=True)
                    pytest.fail(f"the notebook did not finish: prompts {shown}; see {shot}")
                time.sleep(0.2)
            tab.wait_for_timeout(1000)  # a last typesetting pass, if any
            tab.screenshot(path=str(shot), full_page=True)
            yield tab
        finally:
            browser.close()


def _output(page: Any, cell: int) -> Any:
    return page.locator(".jp-Cell").nth(cell).locator(".jp-OutputArea")


def test_dollar_amounts_show_as_written(page: Any) -> None:
    budget = _output(page, BUDGET).inner_text()
    assert "notebook budget $1.00 — spent $0.00, reserved $0.00 (0%)" in budget, budget
    assert "$1.00" in _output(page, METER).inner_text()
    assert "$0.0" in _output(page, RUNS).inner_text()
    assert "saved" in _output(page, CACHE).inner_text()
    assert "cost (USD)" in _output(page, REPORT).inner_text()


def test_mathjax_typesets_none_of_wflos_outputs(page: Any) -> None:
    assert _output(page, CONTROL).locator(MATH).count() >= 1  # MathJax runs on this page
    for cell in range(len(CELLS) - 1):
        assert _output(page, cell).locator(MATH).count() == 0, f"cell {cell}: {CELLS[cell]!r}"


def test_notices_are_quiet_lines_not_stderr(page: Any) -> None:
    output = _output(page, LLM)
    assert "answered" in output.inner_text()
    notices = output.locator(".wflo-notice").all_inner_texts()
    assert any(n.startswith("[wflo] cache hit: gpt-4o-mini answered at $0") for n in notices)
    assert page.locator(f".jp-OutputArea {STDERR_BOX}").count() == 0, page.locator(
        STDERR_BOX
    ).all_inner_texts()


def test_the_meter_widget_renders_bars_and_the_cell(page: Any) -> None:
    meter = _output(page, METER).locator(".wflo-meter")
    assert meter.count() == 1  # anywidget rendered the view, not the text fallback
    assert meter.locator(".wflo-meter-fill").count() >= 1  # the $1 notebook budget's bar
    assert "notebook budget: $0.0" in meter.inner_text()
    compact = _output(page, LLM).locator(".wflo-meter")
    assert compact.count() == 1  # the LLM cell's compact meter
    assert "cell twice: $0.0" in compact.inner_text()
