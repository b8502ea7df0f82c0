"""``Heartbeat``: the ``execute`` activity's heartbeats while the cell runs.

A thread started from inside the activity runs in a copy of its context, so
``activity.heartbeat`` and ``activity.is_cancelled`` refer to that activity. It beats every
``interval_s`` (the worker sends them to the server, throttled); a heartbeat timeout on
the server means this worker was lost and the step is retried elsewhere. When the
server asks to cancel the activity (the workflow was cancelled), or the step was
cancelled in the kernel, it calls ``on_cancel`` on each beat until the cell has ended:
the sandbox's interrupt is idempotent, and a repeat covers a cell that had not started
when the first one was sent.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from temporalio import activity

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 0.5


class Heartbeat:
    """``with Heartbeat(cancelled, on_cancel): run the cell``."""

    def __init__(
        self,
        cancelled: Callable[[], bool],
        on_cancel: Callable[[], None],
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.cancelled = cancelled
        self.on_cancel = on_cancel
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._local = activity.info().is_local
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._beat,), name="wflo-heartbeat", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _beat(self) -> None:
        while True:
            try:
                if not self._local:  # a local activity has no server-side heartbeat
                    activity.heartbeat()
                if activity.is_cancelled() or self.cancelled():
                    self.on_cancel()
            except Exception:
                log.exception("execute heartbeat failed")
            if self._stop.wait(self.interval_s):
                return
