"""The live budget feed: every money move sends the budget's new numbers with
``pg_notify('wflo_budget', ...)`` (from ``wflo_reserve``, ``wflo_finish`` and
``set_budget``); ``BudgetFeed.watch`` listens on that channel and yields one budget's
states, from any process."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator

from sqlalchemy import Engine

from wflo_jupyter.core.budget import BudgetScope, BudgetState
from wflo_jupyter.ledger.budget_rows import state_from_payload

__all__ = ["NOTIFY_CHANNEL", "BudgetFeed"]

NOTIFY_CHANNEL = "wflo_budget"
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
        import psycopg

        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        kwargs.pop("context", None)
        failing = False
        while not stop.is_set():
            try:
                with psycopg.connect(*args, **kwargs, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if failing:
                        log.info("budget feed: connected again")
                        failing = False
                    while not stop.is_set():
                        for note in conn.notifies(timeout=tick_s):
                            try:
                                on_state(state_from_payload(json.loads(note.payload)))
                            except (json.JSONDecodeError, KeyError, ValueError):
                                continue
                            if stop.is_set():
                                return
            except psycopg.Error as exc:
                if not failing:
                    log.warning("budget feed: %s; trying again every %g s", exc, retry_s)
                    failing = True
                stop.wait(retry_s)
