"""Budgets from a real kernel: %wflo budget / team / report / meter, compute cost and
threshold notices in the cell."""

from __future__ import annotations

import uuid

from tests.kernel_driver import Kernel
from tests.marks import KERNEL

pytestmark = KERNEL


def test_notebook_budget_show_and_set(kernel: Kernel) -> None:
    assert "notebook budget: no limit — spent $0.00" in kernel.run("%wflo budget").text
    set_run = kernel.run("%wflo budget 0.50")
    assert "notebook budget $0.50 — spent $0.00, reserved $0.00 (0%)" in set_run.text
    bad = kernel.run("%wflo budget -1")
    assert "UsageError: %wflo budget: a budget cannot be negative: '-1'" in bad.stderr
    assert kernel.alive()


def test_team_budget_and_joining(kernel: Kernel) -> None:
    team = f"team{uuid.uuid4().hex[:6]}"
    missing = kernel.run(f"%wflo team {team}")
    assert missing.error is not None
    assert missing.error_line == (
        f"WfloError: no team budget {team!r}; create it with %wflo budget --team {team} USD"
    )
    created = kernel.run(f"%wflo budget --team {team} 5 --period day")
    assert f"team {team} budget $5.00 per day — spent $0.00" in created.text
    joined = kernel.run(f"%wflo team {team}")
    assert f"also charged to team {team}" in joined.notices
    assert f"team {team} budget" in kernel.run("%wflo budget").text


def test_compute_cost_counts_against_budgets_and_warns(kernel: Kernel) -> None:
    kernel.run("%config WfloMagics.compute_price = 1.0")  # $1 per sandbox second
    try:
        run = kernel.run("%%wflo --budget 0.10 --name costly\nimport time\ntime.sleep(0.5)")
    finally:
        kernel.run("%config WfloMagics.compute_price = 0.0")
    assert run.status == "ok", run.error
    for threshold in (50, 75, 90, 100):
        assert f"[wflo] cell budget crossed {threshold}%" in run.notices
    assert "budget crossed" not in run.stderr  # notices, not errors
    report = kernel.run("%wflo report")
    html = "".join(d.get("text/html", "") for d in report.data)
    assert "costly" in html and "compute cost (USD)" in html
    assert any("image/png" in d for d in report.data)  # the cost chart
    bad = kernel.run("%config WfloMagics.compute_price = -1")
    assert "must be positive" in bad.stderr + bad.error_line


def test_meter_is_a_live_widget(kernel: Kernel) -> None:
    run = kernel.run("%wflo meter")
    assert run.status == "ok", run.error
    assert any("application/vnd.jupyter.widget-view+json" in d for d in run.data)
