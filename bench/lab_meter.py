"""Lab status-bar benchmark: from a committed money move on a team budget (another
process, as a second kernel would) to JupyterLab's status bar showing the new amount.

    python bench/lab_meter.py [--changes 20]

A real JupyterLab (this checkout's ``.venv``, with the lab extension) opens a notebook in
Debian's chromium; the notebook joins a fresh team budget and runs one spending
``%%wflo`` cell (mock provider), so its status bar shows the team budget. Then this
process reserves and settles 1,000 micro-dollars on that team budget ``--changes``
times, one at a time. The latency of one change is from the settle's commit to the
status bar's ``data-spent-micros`` showing the new amount (a ``MutationObserver`` in the
page stamps it with the wall clock; both clocks are this machine's). The path:
PostgreSQL NOTIFY -> the server extension's one LISTEN thread -> its SSE stream -> the
lab extension's model -> the status bar.

The baseline, in the same run and for the same changes, is a bare psycopg ``LISTEN`` in
this process: commit -> notification received. Target (issue #14): p95 <= 1 s.
Needs the local stack (``wflo up``) or ``WFLO_*`` URLs, and Docker for the one cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from tests.ui.lab import chromium, run_all_cells, running_lab, write_notebook
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.server.access import LedgerAccess

NOTEBOOK = "bench.ipynb"
STEP = 1000
OBSERVE = """() => {
    window.__wfloSeen = {};
    const stamp = () => {
        const item = document.querySelector('.wflo-SpendMeter');
        const micros = item && item.dataset.spentMicros;
        if (micros && !(micros in window.__wfloSeen)) {
            window.__wfloSeen[micros] = performance.timeOrigin + performance.now();
        }
    };
    new MutationObserver(stamp).observe(document.body,
        {subtree: true, attributes: true, attributeFilter: ['data-spent-micros']});
    stamp();
}"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def listen_until(url: str, count: int, heard: list[float], ready: threading.Event) -> None:
    """The baseline: wall-clock ms of each ``wflo_budget`` notification."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN wflo_budget")
        ready.set()
        for _ in conn.notifies(timeout=120, stop_after=count):
            heard.append(time.time() * 1000)


def row(name: str, values: list[float], base_p95: float) -> str:
    p95 = percentile(values, 0.95)
    return (
        f"| {name} | {statistics.median(values):.1f} ms | {p95:.1f} ms | "
        f"{max(values):.1f} ms | {p95 / base_p95:.1f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    team = f"bench-lab-{uuid.uuid4().hex[:6]}"
    engine = LedgerAccess().engine()
    url = engine.url.render_as_string(hide_password=False)
    ledger = BudgetLedger(engine)
    with tempfile.TemporaryDirectory() as root_dir:
        root = Path(root_dir)
        write_notebook(
            root / NOTEBOOK,
            [
                "%load_ext wflo_jupyter",
                f"%wflo budget --team {team} 1000",
                f"%wflo team {team}",
                "%%wflo --name spend\nfrom openai import OpenAI\n"
                "OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=5,\n"
                "    messages=[{'role': 'user', 'content': 'bench'}])",
            ],
        )
        with running_lab(root, {}) as lab, chromium() as browser:
            lab.start_session(NOTEBOOK)
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.goto(lab.url(NOTEBOOK))
            run_all_cells(tab, 4, root / "failed.png")
            tab.wait_for_function(
                "() => { const i = document.querySelector('.wflo-SpendMeter');"
                " return !!i && Number(i.dataset.spentMicros) > 0; }",
                timeout=30_000,
            )
            tab.evaluate(OBSERVE)
            start: int = tab.evaluate(
                "Number(document.querySelector('.wflo-SpendMeter').dataset.spentMicros)"
            )
            heard: list[float] = []
            ready = threading.Event()
            listener = threading.Thread(
                target=listen_until,
                args=(
                    url.replace("postgresql+psycopg://", "postgresql://"),
                    2 * args.changes,
                    heard,
                    ready,
                ),
                daemon=True,
            )
            listener.start()
            ready.wait(10)
            committed: list[float] = []
            for i in range(args.changes):
                held = ledger.reserve([("team", team)], STEP)
                ledger.settle(held, STEP)
                committed.append(time.time() * 1000)
                expected = start + (i + 1) * STEP
                tab.wait_for_function(
                    f"() => '{expected}' in window.__wfloSeen", timeout=10_000, polling=10
                )
            seen: dict[str, float] = tab.evaluate("window.__wfloSeen")
            listener.join(10)
    lab_ms = [seen[str(start + (i + 1) * STEP)] - committed[i] for i in range(args.changes)]
    # each change notifies twice (reserve, settle): the settle's is every second one
    base_ms = [heard[2 * i + 1] - committed[i] for i in range(min(args.changes, len(heard) // 2))]
    base_ms = [max(v, 0.01) for v in base_ms]
    base_p95 = percentile(base_ms, 0.95)
    print(f"lab status bar, {args.changes} changes on a team budget from another process")
    print("| path | p50 | p95 | max | p95 vs bare LISTEN |")
    print("|---|---|---|---|---|")
    print(row("bare LISTEN (baseline)", base_ms, base_p95))
    print(row("status bar (server extension SSE -> lab)", lab_ms, base_p95))
    print(json.dumps({"lab_ms": lab_ms, "listen_ms": base_ms}))
    ledger.close()
    engine.dispose()


if __name__ == "__main__":
    main()
