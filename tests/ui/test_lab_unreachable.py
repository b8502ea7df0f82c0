"""The lab extension when the ledger cannot be read: JupyterLab keeps working, the
server extension answers 503 with one line, and the "wflo runs" panel says
``wflo: ledger unreachable`` (the status bar stays hidden: the notebook was never seen
running wflo)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.lab import (
    ARTIFACTS,
    KERNEL_READY,
    Lab,
    chromium,
    free_port,
    running_lab,
    write_notebook,
)

pytestmark = [pytest.mark.ui]

NOTEBOOK = "offline.ipynb"
UNREACHABLE = "wflo: ledger unreachable"


@pytest.fixture(scope="module")
def lab(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab-offline")
    write_notebook(root / NOTEBOOK, ["print('no wflo here')"])
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/wflo"
    with running_lab(root, stack_env, {"WFLO_DATABASE_URL": closed}) as lab:
        lab.start_session(NOTEBOOK)
        yield lab


def test_the_server_answers_503_in_one_line_and_keeps_working(lab: Lab) -> None:
    url = f"{lab.base}/wflo/api/budgets?path={NOTEBOOK}&token={lab.token}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 503
    assert json.loads(refused.value.read()) == {"message": UNREACHABLE}
    assert "version" in lab.api("/api")  # the Jupyter server itself is fine


def test_the_panel_says_the_ledger_is_unreachable(lab: Lab) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page: Any = browser.new_page(viewport={"width": 1300, "height": 800})
        page.goto(lab.url(NOTEBOOK))
        page.wait_for_function(KERNEL_READY, timeout=90_000)
        page.evaluate("window.jupyterapp.commands.execute('wflo-jupyter:open-runs')")
        error = page.locator("#wflo-runs .wflo-RunsPanel-error")
        error.wait_for(state="visible", timeout=30_000)
        assert error.inner_text() == UNREACHABLE
        assert (
            page.locator(".wflo-SpendMeter").count() == 0
            or not page.locator(".wflo-SpendMeter").is_visible()
        )
        page.screenshot(path=str(ARTIFACTS / "lab-unreachable.png"))
