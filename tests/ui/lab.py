"""A real JupyterLab for the browser tests: a server on a free port with a token (its
kernels get the suite's engines and the mock provider, its settings and workspaces in a
temporary folder), Debian's chromium driven by Playwright, and the page helpers both
browser modules use."""

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import REPO_ROOT

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
ARTIFACTS = REPO_ROOT / "tests" / "ui" / "artifacts"
KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_notebook(path: Path, cells: list[str]) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in cells]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(notebook, path)


@dataclass
class Lab:
    """A running JupyterLab: its URL, token, root folder and kernels' environment."""

    base: str
    token: str
    root: Path
    kernel_env: dict[str, str]

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.base}{path}?token={self.token}",
            data=json.dumps(body).encode() if body is not None else None,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")

    def start_session(self, notebook: str) -> None:
        """A kernel session for ``notebook``: the page opens on a running kernel."""
        self.api(
            "/api/sessions",
            {"path": notebook, "type": "notebook", "kernel": {"name": "python3"}},
        )

    def url(self, notebook: str, reset: bool = True) -> str:
        """The notebook in the lab; ``reset`` starts from the default layout."""
        return f"{self.base}/lab/tree/{notebook}?token={self.token}" + ("&reset" if reset else "")


@contextmanager
def running_lab(
    root: Path, stack_env: dict[str, str], extra_env: dict[str, str] | None = None
) -> Iterator[Lab]:
    """JupyterLab serving ``root`` (``extra_env`` added to the server's and its kernels'
    environment); stopped, its kernels shut down, on exit."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    state = root / ".lab-state"
    settings = state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    kernel_env = {**os.environ, **stack_env, "WFLO_PROVIDER": "mock", **(extra_env or {})}
    env = {
        **kernel_env,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
    }
    token = uuid.uuid4().hex
    port = free_port()
    lab = Lab(f"http://127.0.0.1:{port}", token, root, kernel_env)
    bin_dir = REPO_ROOT / ".venv" / "bin"
    jupyter = bin_dir / "jupyter" if (bin_dir / "jupyter").exists() else Path("jupyter")
    log_path = state / "lab.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [
            str(jupyter),
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
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
                lab.api("/api")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + log_path.read_text())
                time.sleep(0.2)
        yield lab
    finally:
        server.terminate()  # the server shuts its kernels down; they close their sandboxes
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, through Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def run_all_cells(tab: Any, cells: int, shot: Path, timeout_s: float = 180) -> None:
    """Run the open notebook's cells (once its kernel is connected and idle) and wait
    until every prompt shows an execution count; a screenshot on failure."""
    tab.wait_for_function(KERNEL_READY, timeout=90_000)
    tab.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    prompts = tab.locator(".jp-CodeCell .jp-InputArea-prompt")
    deadline = time.monotonic() + timeout_s
    while True:
        shown = [text.strip() for text in prompts.all_inner_texts()]
        if len(shown) == cells and all(re.fullmatch(r"\[\d+\]:", t) for t in shown):
            return
        if time.monotonic() > deadline:
            tab.screenshot(path=str(shot), full_page=True)
            pytest.fail(f"the notebook did not finish: prompts {shown}; see {shot}")
        time.sleep(0.2)
