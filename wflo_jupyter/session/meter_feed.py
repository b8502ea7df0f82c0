"""``MeterFeed``: the kernel's one live feed of budget numbers, shared by every meter.

One thread per kernel (started by the first subscriber, stopped by ``close``) follows
the ledger's NOTIFY channel. When a budget that encloses this kernel's steps moves (its
notebook budget, its teams, the running cell's budget), the feed reads a fresh
``MeterSnapshot`` once and hands it to every subscriber; notifications that arrive while
it reads are folded into that one read, so a burst of calls costs one refresh, not one
each. A subscriber is a plain callable (a widget's update), never a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.core.reports import MeterSnapshot

log = logging.getLogger(__name__)

Subscriber = Callable[[MeterSnapshot], None]


class MeterFeed:
    """Fans one budget feed out to the kernel's meters."""

    def __init__(
        self,
        follow: Callable[[Callable[[BudgetState], None], threading.Event], None],
        snapshot: Callable[[], MeterSnapshot],
        relevant: Callable[[BudgetState], bool],
    ) -> None:
        self._follow = follow
        self._snapshot = snapshot
        self._relevant = relevant
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._threads: list[threading.Thread] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every new snapshot; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(subscriber)
            if not self._threads and not self._stop.is_set():
                self._threads = [
                    threading.Thread(target=self._listen, name="wflo-meter-feed", daemon=True),
                    threading.Thread(target=self._publish, name="wflo-meter", daemon=True),
                ]
                for thread in self._threads:
                    thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def refresh(self) -> None:
        """Read and publish a snapshot soon (e.g. after a step, whose cache hits moved
        no budget)."""
        self._dirty.set()

    def _listen(self) -> None:
        def on_state(state: BudgetState) -> None:
            if self._relevant(state):
                self._dirty.set()

        self._follow(on_state, self._stop)

    def _publish(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(0.5):
                continue
            self._dirty.clear()  # later notifications mark it again: nothing is missed
            with self._lock:
                subscribers = list(self._subscribers)
            if not subscribers:
                continue
            try:
                snapshot = self._snapshot()
            except Exception as exc:  # an engine outage: the next notification retries
                log.info("meter snapshot failed: %s", exc)
                continue
            for subscriber in subscribers:
                try:
                    subscriber(snapshot)
                except Exception:
                    log.exception("a budget meter failed to update")

    def close(self) -> None:
        """Stop both threads; subscribers get nothing more."""
        self._stop.set()
        self._dirty.set()
        with self._lock:
            self._subscribers.clear()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
