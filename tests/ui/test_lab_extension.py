"""The lab extension in a real JupyterLab and a real browser: the status-bar meter and
the "wflo runs" panel show what the ledger holds, follow another kernel's spend on the
same team budget, survive a reload, and typeset no dollar amount as math.

One lab server runs for the module. Its notebook is charged to a fresh team budget
($0.0001, the binding one) besides its own ($5), and runs one spending ``%%wflo`` cell
(two distinct calls and a repeat served from the cache): about a third of the team budget,
and a second kernel's run of the same cell takes it past half (the bar's colour changes). Every expected value is read from
the ledger with its own queries, never from the page or the server extension.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from tests.kernel_driver import loaded_kernel
from tests.marks import LLM_KERNEL
from tests.ui.lab import ARTIFACTS, Lab, chromium, run_all_cells, running_lab, write_notebook
from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.core.money import format_usd
from wflo_jupyter.ledger.notebooks import NotebookStep, notebook_budgets, notebook_steps
from wflo_jupyter.server.paths import ledger_keys
from wflo_jupyter.stack.local import LocalStack

pytestmark = [pytest.mark.ui, *LLM_KERNEL]

NOTEBOOK = "meter.ipynb"
TEAM = f"ui-{uuid.uuid4().hex[:8]}"
MARKER = uuid.uuid4().hex[:8]
SPEND_CELL = (
    "%%wflo --name spend\n"
    "from openai import OpenAI\n"
    "client = OpenAI()\n"
    "for prompt in ['first', 'second', 'first']:\n"
    "    client.chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
    f"        messages=[{{'role': 'user', 'content': f'{{prompt}} {MARKER}'}}])\n"
    "print('spent')\n"
)
CELLS = [
    "%load_ext wflo_jupyter",
    f"%wflo budget --team {TEAM} 0.0001",
    f"%wflo team {TEAM}",
    "%wflo budget 5",
    SPEND_CELL,
    "%wflo meter",
]
METER_CELL = 5
STATUS_ITEM = ".wflo-SpendMeter"
PANEL = "#wflo-runs"
MATH = ".MathJax, mjx-container"


def _temporal_ui(stack_env: dict[str, str]) -> str:
    """The local Temporal dev server's web UI (the suite's stack starts one)."""
    info = LocalStack(Path(stack_env["WFLO_HOME"])).engines().get("temporal")
    ui = info.extra.get("ui") if info is not None else None
    if not ui:
        pytest.fail("the suite's Temporal has no web UI: the runs panel's links need one")
    return str(ui)


def _ledger(lab: Lab) -> tuple[list[BudgetState], list[NotebookStep]]:
    engine = create_engine(lab.kernel_env["WFLO_DATABASE_URL"])
    try:
        keys = ledger_keys(NOTEBOOK, [str(lab.root)])
        return notebook_budgets(engine, keys), notebook_steps(engine, keys, 100)
    finally:
        engine.dispose()


def _team(budgets: list[BudgetState]) -> BudgetState:
    [team] = [b for b in budgets if b.scope.kind == "team"]
    return team


def _spend_line(budget: BudgetState) -> str:
    line = f"{format_usd(budget.spent_micros)} / {format_usd(budget.limit_micros)}"
    if budget.reserved_micros:
        line += f" (+{format_usd(budget.reserved_micros)} reserved)"
    return line


def _level(budget: BudgetState) -> str:
    """The bar's colour step: below 50%, then 50, 75, 90, 100% of the limit in use."""
    share = (budget.spent_micros + budget.reserved_micros) / budget.limit_micros
    steps = [(1.0, "l100"), (0.9, "l90"), (0.75, "l75"), (0.5, "l50")]
    return next((name for floor, name in steps if share >= floor), "ok")


def _wait_for_spend(tab: Any, micros: int, timeout_ms: int = 10_000) -> None:
    tab.wait_for_function(
        f"""() => {{
            const item = document.querySelector('{STATUS_ITEM}');
            return !!item && item.dataset.spentMicros === '{micros}';
        }}""",
        timeout=timeout_ms,
    )


@pytest.fixture(scope="module")
def lab(
    stack_env: dict[str, str], runtime_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab-ext")
    write_notebook(root / NOTEBOOK, CELLS)
    with running_lab(root, stack_env, {"WFLO_TEMPORAL_UI": _temporal_ui(stack_env)}) as lab:
        lab.start_session(NOTEBOOK)
        yield lab


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    """The notebook run in chromium; the status bar has caught up with the ledger."""
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        tab.goto(lab.url(NOTEBOOK))
        run_all_cells(tab, len(CELLS), ARTIFACTS / "lab-extension-failed.png")
        _wait_for_spend(tab, _team(_ledger(lab)[0]).spent_micros)
        yield tab


def test_the_extension_is_installed_and_enabled(lab: Lab) -> None:
    from subprocess import run

    from tests.conftest import REPO_ROOT

    listed = run(
        [str(REPO_ROOT / ".venv" / "bin" / "jupyter"), "labextension", "list"],
        capture_output=True,
        text=True,
        env=lab.kernel_env,
        check=True,
    )
    line = next(li for li in (listed.stdout + listed.stderr).splitlines() if "wflo-jupyter" in li)
    assert "enabled" in line and "OK" in line, line


def test_the_status_bar_shows_the_ledgers_spend(page: Any, lab: Lab) -> None:
    budgets, _ = _ledger(lab)
    team = _team(budgets)
    assert team.spent_micros > 0  # the cell spent on the team budget
    item = page.locator(STATUS_ITEM)
    assert item.is_visible()
    assert item.get_attribute("data-spent-micros") == str(team.spent_micros)
    assert _spend_line(team) in item.inner_text()  # the binding budget: the team's, not $5
    assert item.get_attribute("data-level") == _level(team) == "ok"
    title = item.get_attribute("title") or ""
    assert f"team {TEAM}" in title and "notebook budget" in title


def test_the_panel_shows_the_budgets_and_steps_of_the_ledger(page: Any, lab: Lab) -> None:
    page.locator(STATUS_ITEM).click()
    panel = page.locator(PANEL)
    panel.wait_for(state="visible", timeout=5000)
    budgets, steps = _ledger(lab)
    rows = panel.locator(".wflo-Budget")
    assert rows.count() == len(budgets) == 2
    for row, budget in zip(rows.all(), budgets, strict=True):
        assert _spend_line(budget) in row.locator(".wflo-Budget-spend").inner_text()
    step_rows = panel.locator(".wflo-Step")
    assert step_rows.count() == len(steps) == 1
    [step] = steps
    row = step_rows.first
    assert row.locator(".wflo-Step-name").inner_text() == "spend"
    assert row.locator(".wflo-Step-status").inner_text() == step.status == "completed"
    assert row.locator(".wflo-Step-cost").inner_text() == format_usd(step.cost_micros)
    assert step.cached_calls == 1
    assert row.locator(".wflo-Step-cached").inner_text() == (
        f"1 cached, saved {format_usd(step.saved_micros)}"
    )
    link = row.locator(".wflo-Step-workflow a")
    ui = lab.kernel_env["WFLO_TEMPORAL_UI"]
    assert step.workflow_id
    href = link.get_attribute("href")
    assert href == f"{ui}/namespaces/default/workflows/{step.workflow_id}"
    with urllib.request.urlopen(href, timeout=10) as answer:  # the Temporal UI serves it
        assert answer.status == 200
    page.screenshot(path=str(ARTIFACTS / "lab-extension.png"))


def test_the_panel_is_reachable_by_keyboard(page: Any) -> None:
    item = page.locator(STATUS_ITEM)
    item.focus()
    page.keyboard.press("Enter")
    page.locator(PANEL).wait_for(state="visible", timeout=5000)
    table = page.locator(f"{PANEL} table.wflo-Steps")
    table.focus()
    assert page.evaluate("document.activeElement.classList.contains('wflo-Steps')")
    assert table.locator("caption").inner_text().startswith("Steps (1)")


def test_the_meter_widget_shows_the_ledgers_values(page: Any, lab: Lab) -> None:
    budgets, _ = _ledger(lab)
    meter = page.locator(".jp-Cell").nth(METER_CELL).locator(".wflo-meter")
    assert meter.count() == 1
    text = meter.inner_text()
    for budget in budgets:
        assert format_usd(budget.limit_micros) in text, (budget, text)
    assert meter.locator(".wflo-meter-fill").count() >= len(budgets)


def _luminance(page: Any, selector: str, prop: str) -> float:
    """Relative luminance (0 dark .. 1 light) of a computed colour of ``selector``."""
    rgb = page.evaluate(
        f"""() => getComputedStyle(document.querySelector('{selector}'))['{prop}']
            .match(/[\\d.]+/g).slice(0, 3).map(Number)"""
    )
    return float(0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def test_the_panel_follows_the_light_and_dark_themes(page: Any) -> None:
    page.evaluate("window.jupyterapp.commands.execute('wflo-jupyter:open-runs')")
    page.locator(PANEL).wait_for(state="visible", timeout=5000)
    assert _luminance(page, PANEL, "backgroundColor") > 0.8  # JupyterLab Light
    assert _luminance(page, PANEL, "color") < 0.4
    page.evaluate(
        "window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    try:
        page.wait_for_function(
            "() => document.body.dataset.jpThemeLight === 'false'", timeout=15_000
        )
        page.wait_for_timeout(500)  # the theme's stylesheet applies
        assert _luminance(page, PANEL, "backgroundColor") < 0.3
        assert _luminance(page, PANEL, "color") > 0.6
        assert _luminance(page, STATUS_ITEM, "color") > 0.6
        page.screenshot(path=str(ARTIFACTS / "lab-extension-dark.png"))
    finally:
        page.evaluate(
            "window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
        )
        page.wait_for_function(
            "() => document.body.dataset.jpThemeLight === 'true'", timeout=15_000
        )


def test_the_meter_is_hidden_for_a_notebook_wflo_never_ran(page: Any, lab: Lab) -> None:
    write_notebook(lab.root / "plain.ipynb", ["print('no wflo here')"])
    page.evaluate("window.jupyterapp.commands.execute('docmanager:open', {path: 'plain.ipynb'})")
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget?.context?.path === 'plain.ipynb'",
        timeout=15_000,
    )
    page.locator(STATUS_ITEM).wait_for(state="hidden", timeout=10_000)
    assert page.locator(f"{PANEL} .wflo-Step").count() == 0  # the panel follows it too
    page.evaluate(f"window.jupyterapp.commands.execute('docmanager:open', {{path: '{NOTEBOOK}'}})")
    page.locator(STATUS_ITEM).wait_for(state="visible", timeout=10_000)


def test_no_dollar_amount_is_typeset_as_math(page: Any) -> None:
    for where in (STATUS_ITEM, PANEL, ".jp-OutputArea"):
        assert page.locator(f"{where} :is({MATH})").count() == 0, where


def test_a_reload_keeps_the_meter_and_the_panel(page: Any, lab: Lab) -> None:
    page.locator(STATUS_ITEM).click()
    page.locator(PANEL).wait_for(state="visible", timeout=5000)
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_timeout(1500)  # the lab saves its layout to the workspace (debounced)
    page.goto(lab.url(NOTEBOOK, reset=False))  # a reload, without the first load's reset
    team = _team(_ledger(lab)[0])
    _wait_for_spend(page, team.spent_micros, timeout_ms=60_000)
    assert _spend_line(team) in page.locator(STATUS_ITEM).inner_text()
    page.locator(f"{PANEL} .wflo-Step").first.wait_for(state="visible", timeout=10_000)


def test_the_status_bar_follows_another_kernels_spend(page: Any, lab: Lab) -> None:
    before = _team(_ledger(lab)[0]).spent_micros
    env = {**lab.kernel_env, "WFLO_NOTEBOOK_PATH": str(lab.root / "other.ipynb")}
    with loaded_kernel(env) as kernel:
        assert kernel.run(f"%wflo team {TEAM}").status == "ok"
        spent = kernel.run(SPEND_CELL.replace(MARKER, MARKER + "-other"))
        assert spent.status == "ok", spent.text
        settled = time.monotonic()  # the cell returned: its spend is settled in the ledger
        after = _team(_ledger(lab)[0]).spent_micros
        assert after > before
        _wait_for_spend(page, after)
        followed_ms = (time.monotonic() - settled) * 1000
    page.screenshot(path=str(ARTIFACTS / "lab-extension-second-kernel.png"))
    (ARTIFACTS / "second-kernel.json").write_text(json.dumps({"followed_ms": followed_ms}))
    team = _team(_ledger(lab)[0])
    item = page.locator(STATUS_ITEM)
    assert _spend_line(team) in item.inner_text()
    assert item.get_attribute("data-level") == _level(team) == "l50"  # past half: warn colour
