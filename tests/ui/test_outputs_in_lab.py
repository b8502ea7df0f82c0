"""The magics' outputs in a real JupyterLab, in a real browser (Debian's chromium driven by
Playwright): dollar amounts show as written (MathJax typesets none of them, while it does
typeset a control formula on the same page), and wflo's notices are quiet lines, not the
red stderr box.

One lab server and one notebook run for the module; each test reads the rendered page.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.marks import LLM_KERNEL
from tests.ui.lab import ARTIFACTS, Lab, chromium, run_all_cells, running_lab, write_notebook

pytestmark = [pytest.mark.ui, *LLM_KERNEL]

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


@pytest.fixture(scope="module")
def lab(
    stack_env: dict[str, str], runtime_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """A JupyterLab server with the notebook written and its kernel session started."""
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "outputs.ipynb", CELLS)
    with running_lab(root, stack_env) as lab:
        lab.start_session("outputs.ipynb")
        yield lab


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    """The notebook run in chromium (Run All, once its kernel is connected and idle); a
    screenshot is saved in tests/ui/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "outputs.png"
    with chromium() as browser:
        tab = browser.new_page(viewport={"width": 1300, "height": 1900})
        tab.goto(lab.url("outputs.ipynb"))
        run_all_cells(tab, len(CELLS), shot)
        tab.wait_for_timeout(1000)  # a last typesetting pass, if any
        tab.screenshot(path=str(shot), full_page=True)
        yield tab


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
