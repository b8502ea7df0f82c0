"""``HitRecorder``: the bookkeeping of cache hits, group-committed off the answer path.

A cache hit moves no money, so the gateway answers the cell first and records the hit
afterwards: its $0 ``llm_calls`` row (with its saved dollars and its outbox event) in
Postgres, and the namespace's hit counters in Redis. Doing that per hit, on the thread
that answered, cost a Postgres commit and a Redis round trip per call, and took CPU
from the next call of the same cell. Here one background thread takes every hit
queued so far and writes them together: one transaction for all their rows and events,
one Redis pipeline for all the counters. A burst of hits costs one commit.

``record`` only queues. The writer waits up to ``linger_s`` after the first hit of a
batch for more (a cell's loop of cached calls comes in every millisecond or two), so
one transaction carries many rows. ``drain`` writes what is queued at once and returns
when it is written: a step calls it before it closes (``StepIO.llm_drain``), so its
report sees every hit, and ``close`` drains before the thread stops.

A failed write is retried with backoff for ``retry_s`` (Postgres restarting); after
that the batch is logged as lost, with the error and how many rows it had.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from wflo_jupyter.cache.llm_cache import LlmCache
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall

__all__ = ["HitRecorder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Hit:
    step_id: str | None
    call: LlmCall
    namespace: str


class HitRecorder:
    """Group-commits cache-hit rows and counters on one daemon thread (started lazily)."""

    def __init__(
        self,
        budgets: BudgetLedger,
        cache: LlmCache | None,
        *,
        linger_s: float = 0.02,
        max_batch: int = 500,
        retry_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.budgets = budgets
        self.cache = cache
        self.linger_s = linger_s
        self.max_batch = max_batch
        self.retry_s = retry_s
        self._sleep = sleep
        self._queue: queue.SimpleQueue[_Hit | threading.Event | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # transactions written
        self.written = 0  # rows written
        self.lost = 0  # rows given up on

    def record(self, step_id: str | None, call: LlmCall, namespace: str) -> None:
        """Queue a hit's $0 row and its counters (written within ``linger_s``)."""
        self._put(_Hit(step_id, call, namespace))

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Write every hit queued so far now; False if that took over ``timeout_s``."""
        with self._lock:
            if self._thread is None:
                return True  # nothing was ever queued
        done = threading.Event()
        self._put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout_s)

    def _put(self, item: _Hit | threading.Event) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the hit recorder is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="wflo-hit-recorder", daemon=True
                )
                self._thread.start()
            self._queue.put(item)

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Hit] = []
            drained: list[threading.Event] = []
            deadline: float | None = None
            while len(batch) < self.max_batch:
                if deadline is None:
                    item = self._queue.get()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is None:
                    stopping = True
                    break
                if isinstance(item, threading.Event):
                    drained.append(item)
                    break  # write now: someone waits for everything queued before this
                batch.append(item)
                if deadline is None:
                    deadline = time.monotonic() + self.linger_s
            if batch:
                self._write(batch)
            for done in drained:
                done.set()

    def _write(self, batch: list[_Hit]) -> None:
        self._count_hits(batch)
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                self.budgets.record_cached_calls([(hit.step_id, hit.call) for hit in batch])
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    self.lost += len(batch)
                    log.error("lost %d cache-hit ledger rows: %s", len(batch), exc)
                    return
                self._sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.batches += 1
            self.written += len(batch)
            return

    def _count_hits(self, batch: list[_Hit]) -> None:
        if self.cache is None:
            return
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for hit in batch:
            total = totals[hit.namespace]
            total[0] += 1
            total[1] += hit.call.saved_micros
        for namespace, (hits, saved) in totals.items():
            self.cache.record_hit(namespace, saved, hits=hits)
