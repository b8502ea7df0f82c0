"""``ChangeHub``: one ledger listener for the whole Jupyter server, fanned out to every
open event stream.

One daemon thread (started by the first subscriber, stopped when the last one leaves, so
an idle server holds no connection) follows the ledger's ``wflo_budget``
and ``wflo_step`` notifications on one PostgreSQL connection (``ledger.feed
.follow_channels``, which reconnects by itself). Each notification is matched against the
subscriptions (a notebook's ledger keys and the team budgets its steps were charged to)
and handed to each matching subscriber's asyncio queue with
``loop.call_soon_threadsafe``: the server's event loop never waits on the database.

Events (plain dicts, sent as JSON):

- ``{"type": "budget", "budget": {...}}``: money moved on the notebook's budget or one
  of its teams (from any kernel); ``budget`` is the new state, as ``GET budgets`` shows it;
- ``{"type": "step", "step_id": ..., "status": ...}``: a step of the notebook started or
  finished (its costs: refetch ``GET steps``);
- ``{"type": "resync"}``: the stream is live (first message of every stream once the
  listener holds its LISTEN), or the listener reconnected, or the client fell behind:
  (re)fetch budgets and steps now; anything notified before is not replayed;
- ``{"type": "unreachable", "message": "wflo: ledger unreachable"}``: the listener lost
  the ledger (a ``resync`` follows when it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

from wflo_jupyter.ledger.budget_rows import state_from_payload
from wflo_jupyter.ledger.feed import CHANNELS, NOTIFY_CHANNEL, STEP_CHANNEL, follow_channels
from wflo_jupyter.ledger.notebooks import notebook_teams
from wflo_jupyter.server.access import LedgerAccess, LedgerUnreachable
from wflo_jupyter.server.payloads import budget_json

log = logging.getLogger(__name__)

Event = dict[str, Any]
UNREACHABLE = "wflo: ledger unreachable"
QUEUE_SIZE = 256
RETRY_S = 2.0


class Subscription:
    """One event stream: the notebook it watches and the queue its handler drains
    (``None`` in the queue: the hub is closing)."""

    def __init__(
        self, keys: Iterable[str], teams: Iterable[str], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.keys = frozenset(keys)
        self.teams = frozenset(teams)
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_SIZE)

    def push(self, event: Event | None) -> None:
        """Hand ``event`` to the subscriber's loop (from any thread)."""
        with contextlib.suppress(RuntimeError):  # its loop is closed: the stream is gone
            self.loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Event | None) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:  # a client that does not read: drop, then resync
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait({"type": "resync"} if event is not None else None)


class ChangeHub:
    """Fans the ledger's notifications out to the server's event streams."""

    def __init__(self, access: LedgerAccess, *, retry_s: float = RETRY_S) -> None:
        self.access = access
        self.retry_s = retry_s
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._closed = False
        self._run: threading.Event | None = None  # the running listener's stop signal
        self.linked = threading.Event()
        """Set while the listener holds a live LISTEN connection."""

    def subscribe(
        self, keys: Iterable[str], teams: Iterable[str], loop: asyncio.AbstractEventLoop
    ) -> Subscription:
        sub = Subscription(keys, teams, loop)
        with self._lock:
            self._subs.append(sub)
            if self._run is None and not self._closed:
                self._run = threading.Event()
                threading.Thread(
                    target=self._listen, args=(self._run,), name="wflo-ledger-listener", daemon=True
                ).start()
            elif self.linked.is_set():
                sub.push({"type": "resync"})  # as the first subscribers got at LISTEN
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
            if not self._subs and self._run is not None:
                self._run.set()  # the listener ends within a tick
                self._run = None
                self.linked.clear()

    def learn_teams(self, keys: Iterable[str], teams: Iterable[str]) -> None:
        """The team budgets a notebook's steps were charged to, as a fresh read found
        them (a ``GET budgets``): its streams follow those teams from now on."""
        wanted, found = frozenset(keys), frozenset(teams)
        with self._lock:
            for sub in self._subs:
                if sub.keys == wanted:
                    sub.teams = found

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def listening(self) -> bool:
        """Whether a listener thread runs (there are subscribers)."""
        with self._lock:
            return self._run is not None

    def close(self) -> None:
        """Stop the listener; every stream gets ``None`` and ends."""
        with self._lock:
            self._closed = True
            subs, self._subs = self._subs, []
            run, self._run = self._run, None
        if run is not None:
            run.set()
        for sub in subs:
            sub.push(None)

    # -- the listener thread ---------------------------------------------------------------
    def _listen(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                engine = self.access.engine()
            except LedgerUnreachable:
                stop.wait(self.retry_s)
                continue
            try:
                follow_channels(
                    engine,
                    CHANNELS,
                    self._on_note,
                    stop,
                    retry_s=self.retry_s,
                    on_link=lambda up: self._on_link(up, stop),
                )
            except Exception:  # never let the listener die: log, wait, follow again
                log.exception("wflo: the ledger listener failed; restarting it")
                self.linked.clear()
                stop.wait(self.retry_s)

    def _on_link(self, up: bool, stop: threading.Event) -> None:
        if stop.is_set():
            return
        if up:
            self.linked.set()
            self._broadcast({"type": "resync"})
        else:
            self.linked.clear()
            self._broadcast({"type": "unreachable", "message": UNREACHABLE})

    def _broadcast(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.push(event)

    def _on_note(self, channel: str, payload: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
        if not subs:
            return
        if channel == NOTIFY_CHANNEL:
            kind, key = payload.get("kind"), payload.get("key")
            matching = [
                s
                for s in subs
                if (kind == "notebook" and key in s.keys) or (kind == "team" and key in s.teams)
            ]
            if matching:
                try:
                    event: Event = {
                        "type": "budget",
                        "budget": budget_json(state_from_payload(payload)),
                    }
                except (KeyError, ValueError, TypeError):
                    return
                for sub in matching:
                    sub.push(event)
        elif channel == STEP_CHANNEL:
            path = payload.get("notebook_path")
            matching = [s for s in subs if path in s.keys]
            self._refresh_teams(matching)
            event = {
                "type": "step",
                "step_id": payload.get("step_id"),
                "status": payload.get("status"),
            }
            for sub in matching:
                sub.push(event)

    def _refresh_teams(self, subs: list[Subscription]) -> None:
        """A step of these notebooks started or finished: re-read their teams (a step
        that joined a team holds money against it by the time it finishes)."""
        for keys in {s.keys for s in subs}:
            wanted = sorted(keys)
            none: set[str] = set()
            try:
                teams = self.access.read(lambda e: notebook_teams(e, wanted), none)  # noqa: B023
            except LedgerUnreachable:
                continue
            self.learn_teams(keys, teams)
