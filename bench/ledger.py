"""Ledger benchmark: atomic reservations under contention, and the NOTIFY live feed.

    python bench/ledger.py [--database-url URL] [--procs 8] [--seconds 3] [--rounds 3]

Runs on its own database (created, migrated, dropped). Each contention mode starts
``--procs`` processes that hammer ONE shared team budget for ``--seconds``:

- ``baseline``: a bare single-statement ``UPDATE budgets SET reserved_micros = ... WHERE
  id = ... AND spent + reserved + amount <= limit`` in autocommit (no reservation row, no
  events, no NOTIFY): the floor of any SQL reservation on one hot row;
- ``reserve``: ``BudgetLedger.reserve`` on the team budget (lock, check, reservation row,
  outbox event, NOTIFY, commit);
- ``reserve x3``: ``reserve`` against cell + notebook (per process) + the shared team;
- ``reserve+settle``: a reserve followed by its settle with an ``llm_calls`` row.

Then the live feed: a ``watch`` listener in another thread, and the time from starting
a ``reserve`` to the listener yielding the new state (p50/p95 over 300 reserves).
Modes run interleaved for ``--rounds`` rounds; the printed ratio is the median of the
per-round ratios against the baseline of the same round.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

from wflo_jupyter.core.pricing import Usage
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall
from wflo_jupyter.ledger.store import Ledger, drop_database, with_database
from wflo_jupyter.stack.settings import normalize_database_url

TEAM = ("team", "bench")
HUGE = 10**15


def _worker(mode: str, url: str, index: int, seconds: float, start, out) -> None:
    engine_kwargs = {"pool_size": 1, "max_overflow": 0}
    if mode == "baseline":
        engine = create_engine(url, isolation_level="AUTOCOMMIT", **engine_kwargs)
        with engine.connect() as conn:
            budget_id = conn.execute(
                text("SELECT id FROM budgets WHERE scope_kind = 'team' AND scope_key = 'bench'")
            ).scalar_one()
            stmt = text(
                "UPDATE budgets SET reserved_micros = reserved_micros + :a "
                "WHERE id = :id AND spent_micros + reserved_micros + :a <= limit_micros"
            )
            start.wait()
            done, deadline = 0, time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.execute(stmt, {"a": 1 + done % 7, "id": budget_id})
                done += 1
        engine.dispose()
        out.put(done)
        return
    ledger = BudgetLedger(create_engine(url, **engine_kwargs))
    scopes = [TEAM]
    if mode == "reserve x3":
        ledger.set_budget("cell", f"cell-{index}", HUGE)
        ledger.set_budget("notebook", f"nb-{index}", HUGE)
        scopes = [("cell", f"cell-{index}"), ("notebook", f"nb-{index}"), TEAM]
    usage = Usage(input=10, output=5)
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        reservation = ledger.reserve(scopes, 1 + done % 7, lease_s=600, call_label="bench")
        if mode == "reserve+settle":
            call = LlmCall("openai", "gpt-4o-mini", "/v1/chat/completions", usage)
            ledger.settle(reservation, done % 7, call=call)
        done += 1
    ledger.close()
    out.put(done)


def run_mode(mode: str, url: str, procs: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(mode, url, i, seconds, start, out)) for i in range(procs)
    ]
    for w in workers:
        w.start()
    time.sleep(2.0 + 0.25 * procs)  # let every process import and connect
    start.set()
    total = sum(out.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join(timeout=30)
    return total / seconds


def notify_latency(url: str, samples: int = 300) -> tuple[list[float], list[float]]:
    ledger = BudgetLedger(create_engine(url))
    ledger.set_budget("team", "latency", HUGE)
    received: list[float] = []
    ready = threading.Event()

    def listen() -> None:
        feed = ledger.watch("team", "latency", timeout=5)
        next(feed)
        ready.set()
        for _ in feed:
            received.append(time.perf_counter())
            if len(received) >= samples:
                break
        feed.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    started: list[float] = []
    durations: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        ledger.reserve([("team", "latency")], 1, lease_s=600)
        durations.append(time.perf_counter() - t0)
        started.append(t0)
        while len(received) < len(started):  # one update in flight at a time
            if time.perf_counter() - t0 > 5:
                raise RuntimeError("NOTIFY not received within 5 s")
            time.sleep(0.0002)
    thread.join(10)
    ledger.close()
    return [r - s for r, s in zip(received, started, strict=True)], durations


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("WFLO_DATABASE_URL"))
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.database_url:
        parser.error("set WFLO_DATABASE_URL or pass --database-url")
    base = normalize_database_url(args.database_url)
    url = with_database(base, f"wflo_bench_{uuid.uuid4().hex[:8]}")
    ledger = Ledger.connect(url)
    try:
        budgets = BudgetLedger(ledger.engine)
        budgets.set_budget(*TEAM, HUGE)
        with ledger.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
        print(
            f"PostgreSQL {version}, {os.cpu_count()} CPUs, {args.procs} processes, "
            f"{args.rounds} interleaved rounds of {args.seconds:g} s per mode (medians)"
        )
        modes = ("baseline", "reserve", "reserve x3", "reserve+settle")
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):  # interleaved: a busy machine hits every mode alike
            for mode in modes:
                rates[mode].append(run_mode(mode, url, args.procs, args.seconds))
        ratios = {
            mode: statistics.median(
                r / b for r, b in zip(rates[mode], rates["baseline"], strict=True)
            )
            for mode in modes
        }
        for mode in modes:
            runs = " ".join(f"{r:.0f}" for r in rates[mode])
            print(
                f"  {mode:<15} {statistics.median(rates[mode]):>7.0f} ops/s (runs: {runs})"
                f"   {ratios[mode]:5.2f}x baseline"
            )
        latencies, durations = notify_latency(url)
        print(
            f"  NOTIFY: reserve() start -> listener yields: p50 {pct(latencies, 50) * 1e3:.2f} ms, "
            f"p95 {pct(latencies, 95) * 1e3:.2f} ms  (reserve() itself: p50 "
            f"{pct(durations, 50) * 1e3:.2f} ms, p95 {pct(durations, 95) * 1e3:.2f} ms; "
            f"n={len(latencies)})"
        )
        target = ratios["reserve"]
        print(
            f"reserve / baseline = {target:.2f} (target >= 0.50): "
            f"{'OK' if target >= 0.5 else 'BELOW TARGET'}"
        )
    finally:
        ledger.close()
        drop_database(url)


if __name__ == "__main__":
    main()
