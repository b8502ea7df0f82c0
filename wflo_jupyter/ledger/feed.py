"""The live feeds: every money move sends the budget's new numbers with
``pg_notify('wflo_budget', ...)`` (from ``wflo_reserve``, ``wflo_finish`` and
``set_budget``), and every step that starts or finishes sends ``pg_notify('wflo_step',
...)`` (``Ledger.start_step`` / ``finish_step``: its id, session, notebook and status).
``BudgetFeed.watch`` listens on the budget channel and yields one budget's states, from
any process; ``follow_channels`` follows any of the channels on one connection and
reconnects by itself."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Engine

from wflo_jupyter.core.budget import BudgetScope, BudgetState
from wflo_jupyter.ledger.budget_rows import state_from_payload

__all__ = ["CHANNELS", "NOTIFY_CHANNEL", "STEP_CHANNEL", "BudgetFeed", "follow_channels"]

NOTIFY_CHANNEL = "wflo_budget"
STEP_CHANNEL = "wflo_step"
CHANNELS = (NOTIFY_CHANNEL, STEP_CHANNEL)
log = logging.getLogger(__name__)


class BudgetFeed:
    """Listens to the money moves on one engine's database; ``read_state(kind, key)``
    reads a budget as it stands (the first state a watch yields)."""

    def __init__(self, engine: Engine, read_state: Callable[[str, str], BudgetState]) -> None:
        self.engine = engine
        self._read_state = read_state

    def watch(
        self, kind: str, key: str, *, timeout: float | None = None, initial: bool = True
    ) -> Iterator[BudgetState]:
        """See ``BudgetLedger.watch``."""
        import psycopg

        scope = BudgetScope(kind, key)  # type: ignore[arg-type]
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        kwargs.pop("context", None)
        conn = psycopg.connect(*args, **kwargs, autocommit=True)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            if initial:  # read after LISTEN: no update can fall between the two
                yield self._read_state(scope.kind, scope.key)
            while True:
                received = False
                for note in conn.notifies(timeout=timeout, stop_after=1):
                    received = True
                    try:
                        payload = json.loads(note.payload)
                    except json.JSONDecodeError:
                        continue
                    if payload.get("kind") == scope.kind and payload.get("key") == scope.key:
                        yield state_from_payload(payload)
                if not received:
                    return
        finally:
            conn.close()

    def follow(
        self,
        on_state: Callable[[BudgetState], None],
        stop: threading.Event,
        *,
        tick_s: float = 0.5,
        retry_s: float = 2.0,
    ) -> None:
        """Call ``on_state`` with every budget state any process notifies, until ``stop``
        is set (checked every ``tick_s``). A lost database connection is said once in the
        log and tried again every ``retry_s``: the follower recovers by itself."""

        def on_note(_channel: str, payload: dict[str, Any]) -> None:
            try:
                state = state_from_payload(payload)
            except (KeyError, ValueError, TypeError):
                return
            on_state(state)

        follow_channels(
            self.engine, (NOTIFY_CHANNEL,), on_note, stop, tick_s=tick_s, retry_s=retry_s
        )


def follow_channels(
    engine: Engine,
    channels: Sequence[str],
    on_note: Callable[[str, dict[str, Any]], None],
    stop: threading.Event,
    *,
    tick_s: float = 0.5,
    retry_s: float = 2.0,
    on_link: Callable[[bool], None] | None = None,
) -> None:
    """Call ``on_note(channel, payload)`` with every JSON object notified on ``channels``
    (of ``CHANNELS``) of ``engine``'s database, on one connection, until ``stop`` is set
    (checked every ``tick_s``). A lost connection is said once in the log and tried again
    every ``retry_s``; ``on_link(True)`` follows every (re)connection, ``on_link(False)``
    the first failure of a run of them (notifications sent meanwhile are lost: a
    listener re-reads what it shows when the link comes back)."""
    import psycopg

    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown notification channels: {unknown}")
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    kwargs.pop("context", None)
    failing = False
    while not stop.is_set():
        try:
            with psycopg.connect(*args, **kwargs, autocommit=True) as conn:
                for channel in channels:
                    conn.execute(f"LISTEN {channel}")  # a constant of CHANNELS
                if failing:
                    log.info("ledger feed: connected again")
                    failing = False
                if on_link is not None:
                    on_link(True)
                while not stop.is_set():
                    for note in conn.notifies(timeout=tick_s):
                        try:
                            payload = json.loads(note.payload)
                        except json.JSONDecodeError:
                            continue
                        if isinstance(payload, dict):
                            on_note(note.channel, payload)
                        if stop.is_set():
                            return
        except psycopg.Error as exc:
            if not failing:
                log.warning("ledger feed: %s; trying again every %g s", exc, retry_s)
                failing = True
                if on_link is not None:
                    on_link(False)
            stop.wait(retry_s)
