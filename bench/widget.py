"""Budget meter benchmark: from a committed money move to the widget's trait change.

    WFLO_DATABASE_URL=... WFLO_TEMPORAL_ADDRESS=... python bench/widget.py [--changes 50]

A ``WfloSession`` (the kernel's side) shows a ``BudgetMeter`` following its one meter
feed. Money then moves on the notebook's team budget, ``--changes`` times each:

- ``same kernel``: this session's own ``BudgetLedger`` reserves and settles;
- ``second kernel``: another process (its own connections) reserves and settles on the
  same team budget, printing when each settle committed.

The latency of one change is from the settle's commit (the call returned) to the
meter's ``budgets`` trait showing the new spent amount. The baseline, in the same run,
is a bare psycopg ``LISTEN`` on the same channel: commit to notification received. The
target of issue #12 is p95 <= 250 ms; the ratio to the bare LISTEN is printed beside it.
Needs the local stack or ``WFLO_*`` URLs (Docker is not used: isolation is irrelevant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wflo_jupyter.jupyter.meter import BudgetMeter
from wflo_jupyter.session import WfloSession, load_settings

SECOND_KERNEL = """
import sys, time, json
from sqlalchemy import create_engine
from wflo_jupyter.ledger.budgets import BudgetLedger
url, team, changes = sys.argv[1], sys.argv[2], int(sys.argv[3])
ledger = BudgetLedger(create_engine(url))
print("ready", flush=True)
for i in range(changes):
    sys.stdin.readline()
    held = ledger.reserve([("team", team)], 1000)
    ledger.settle(held, 1000)
    print(json.dumps({"t": time.time(), "i": i}), flush=True)
ledger.close()
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class TraitClock:
    """When the meter's team budget first showed each spent amount."""

    def __init__(self, meter: BudgetMeter, team: str) -> None:
        self.seen: dict[int, float] = {}
        self._team = team
        self._changed = threading.Condition()
        meter.observe(self._on_change, names=["budgets"])

    def _on_change(self, change: Any) -> None:
        now = time.time()
        for budget in change["new"]:
            if budget["kind"] == "team" and budget["key"] == self._team:
                with self._changed:
                    self.seen.setdefault(budget["spent_micros"], now)
                    self._changed.notify_all()

    def wait_for(self, spent: int, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self._changed:
            while spent not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the meter never showed spent={spent}")
                self._changed.wait(left)
            return self.seen[spent]


def bare_listen(url: str, moves: Any, changes: int) -> list[float]:
    """Commit to notification on a bare psycopg LISTEN (the floor)."""
    import psycopg

    latencies: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN wflo_budget")
        for _ in range(changes):
            committed = moves()
            for _note in conn.notifies(timeout=10, stop_after=1):
                latencies.append(time.time() - committed)
            time.sleep(0.02)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    session = WfloSession(load_settings(), notebook_path=f"bench-{uuid.uuid4().hex[:8]}")
    session.start()
    assert session.ledger is not None
    assert session.budgets is not None
    team = f"bench-team-{uuid.uuid4().hex[:6]}"
    session.set_team_budget(team, 10**12, None)
    session.join_team(team)
    meter = BudgetMeter(session.meter_snapshot())
    meter.follow(session.subscribe_meter)
    clock = TraitClock(meter, team)
    spent = session.team_state(team).spent_micros
    results: dict[str, list[float]] = {"same kernel": [], "second kernel": []}

    budgets = session.budgets

    def move_here() -> float:
        budgets.settle(budgets.reserve([("team", team)], 1000), 1000)
        return time.time()

    for _ in range(args.changes):
        committed = move_here()
        spent += 1000
        results["same kernel"].append(clock.wait_for(spent) - committed)
        time.sleep(0.02)

    url = session.ledger.engine.url.render_as_string(hide_password=False)
    other = subprocess.Popen(
        [sys.executable, "-c", SECOND_KERNEL, url, team, str(args.changes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdin is not None
    assert other.stdout is not None
    assert other.stdout.readline().strip() == "ready"
    for _ in range(args.changes):
        other.stdin.write("go\n")
        other.stdin.flush()
        committed = json.loads(other.stdout.readline())["t"]
        spent += 1000
        results["second kernel"].append(clock.wait_for(spent) - committed)
        time.sleep(0.02)
    other.stdin.close()
    other.wait(timeout=30)

    libpq_url = url.replace("postgresql+psycopg://", "postgresql://")
    baseline = bare_listen(libpq_url, move_here, args.changes)
    meter.close()
    session.close()

    base_p95 = percentile(baseline, 0.95) * 1000
    print(f"bench/widget.py: {args.changes} changes each; commit -> trait change (ms)")
    print(f"{'path':<30} {'p50':>8} {'p95':>8} {'max':>8} {'p95 / bare LISTEN':>18}")
    base50 = statistics.median(baseline) * 1000
    print(
        f"{'bare LISTEN (baseline)':<30} {base50:8.2f} {base_p95:8.2f} "
        f"{max(baseline) * 1000:8.2f} {'1.00x':>18}"
    )
    for name, values in results.items():
        p50, p95 = statistics.median(values) * 1000, percentile(values, 0.95) * 1000
        verdict = "ok" if p95 <= 250 else "OVER 250 ms"
        print(
            f"{'meter, ' + name:<30} {p50:8.2f} {p95:8.2f} {max(values) * 1000:8.2f} "
            f"{p95 / base_p95:17.1f}x  {verdict}"
        )


if __name__ == "__main__":
    main()
