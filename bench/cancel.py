"""Cancellation benchmark: the notebook's interrupt of a running ``%%wflo`` cell.

    WFLO_DATABASE_URL=... WFLO_TEMPORAL_ADDRESS=... python bench/cancel.py [-n 20]

One real kernel (``tests/kernel_driver.py``, jupyter_client over ZMQ) with the extension
loaded and its sandbox warm. Each round runs, in turn:

- baseline: a plain cell (no ``%%wflo``) that prints ``started`` and sleeps; the
  kernel is interrupted as soon as ``started`` arrives; measured: interrupt -> the
  cell's ``execute_reply``;
- ours: the same cell under ``%%wflo``; measured: interrupt -> the cell's reply (the
  workflow cancelled, the cell interrupted in the sandbox, the step recorded), and
  interrupt -> the ledger's ``cancelled`` notification (``pg_notify('wflo_step')``,
  heard on a bare psycopg ``LISTEN`` in this process).

Prints p50 / p95 / max of each and the ratio of ours to the plain interrupt, and how
many interrupts were lost (no reply within ``LOST_S``: the kernel is interrupted again
and the round is not timed; a plain cell sometimes sleeps through its first). Without
``WFLO_*`` URLs the local stack is used (``wflo up``), as a kernel would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from common import percentile

from tests.kernel_driver import Kernel
from wflo_jupyter.ledger.store import ensure_database
from wflo_jupyter.session import load_settings
from wflo_jupyter.stack.settings import resolve_endpoints

LOST_S = 10.0  # no reply this long after the interrupt: it was lost
BODY = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"


class CancelledSteps:
    """``time.monotonic()`` of each step's ``cancelled`` notification (a LISTEN thread)."""

    def __init__(self, url: str) -> None:
        self.seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._conn = psycopg.connect(url, autocommit=True)
        self._conn.execute("LISTEN wflo_step")
        self._stop = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop:
            for note in self._conn.notifies(timeout=0.5):
                at = time.monotonic()
                payload = json.loads(note.payload)
                if payload.get("status") == "cancelled":
                    with self._cond:
                        self.seen[payload["session_id"]] = at
                        self._cond.notify_all()

    def take(self, session_id: str, timeout: float = 60.0) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: session_id in self.seen, timeout):
                raise TimeoutError("no 'cancelled' notification for the step")
            return self.seen.pop(session_id)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2.0)
        self._conn.close()


def interrupt_round(kernel: Kernel, code: str) -> tuple[float, float] | None:
    """(when the kernel was interrupted, when the cell replied), monotonic seconds; None
    when the interrupt was lost (no reply within LOST_S: interrupted again, not timed)."""
    msg_id = kernel.submit(code)
    interrupted = kernel.interrupt_once(msg_id, "started")
    try:
        kernel.collect(msg_id, timeout=LOST_S)
    except TimeoutError:
        kernel.manager.interrupt_kernel()
        kernel.collect(msg_id, timeout=60)
        return None
    return interrupted, time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=20)
    args = parser.parse_args()
    endpoints = resolve_endpoints(load_settings())
    env = {
        "WFLO_DATABASE_URL": endpoints.database_url,
        "WFLO_TEMPORAL_ADDRESS": endpoints.temporal_address,
        **({"WFLO_REDIS_URL": endpoints.redis_url} if endpoints.redis_url else {}),
    }
    ensure_database(endpoints.database_url)
    libpq_url = endpoints.database_url.replace("postgresql+psycopg://", "postgresql://")
    steps = CancelledSteps(libpq_url)
    kernel = Kernel(env={**os.environ, **env})
    results: dict[str, list[float]] = {"plain": [], "reply": [], "ledger": []}
    lost = {"plain": 0, "%%wflo": 0}
    try:
        kernel.load_wflo()
        session_id = kernel.wflo_session_id()
        warm = kernel.run("%%wflo\nwarm = 1")
        assert warm.status == "ok", warm.error
        for _ in range(args.rounds):
            plain = interrupt_round(kernel, BODY)
            if plain is None:
                lost["plain"] += 1
            else:
                results["plain"].append(plain[1] - plain[0])
            ours = interrupt_round(kernel, "%%wflo --name bench-cancel\n" + BODY)
            cancelled = steps.take(session_id)
            if ours is None:
                lost["%%wflo"] += 1
                continue
            results["reply"].append(ours[1] - ours[0])
            results["ledger"].append(cancelled - ours[0])
    finally:
        kernel.close()
        steps.close()

    base = results["plain"]
    base50, base95 = statistics.median(base) * 1000, percentile(base, 0.95) * 1000
    print(f"bench/cancel.py: {args.rounds} rounds; from the kernel's interrupt (ms)")
    print(f"{'path':<44} {'p50':>8} {'p95':>8} {'max':>8} {'p50 ratio':>10} {'p95 ratio':>10}")
    rows = (
        ("plain kernel interrupt -> reply (baseline)", base),
        ("%%wflo interrupt -> cell reply", results["reply"]),
        ("%%wflo interrupt -> ledger 'cancelled'", results["ledger"]),
    )
    print(
        f"lost interrupts (no reply within {LOST_S:g} s; interrupted again, not timed): "
        f"plain {lost['plain']}, %%wflo {lost['%%wflo']}"
    )
    for name, values in rows:
        p50, p95 = statistics.median(values) * 1000, percentile(values, 0.95) * 1000
        print(
            f"{name:<44} {p50:8.1f} {p95:8.1f} {max(values) * 1000:8.1f} "
            f"{p50 / base50:9.1f}x {p95 / base95:9.1f}x"
        )


if __name__ == "__main__":
    main()
