"""Routing of the host's answers to the LLM calls in flight, by request id."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

LLM_DRAIN_S = 0.5
"""When the channel dies, how long waiting requests get to answer 502 before the agent exits."""


class LlmRouter:
    """Answer frames of in-flight LLM calls, one queue per request id: the channel's reading
    thread ``deliver``s, the proxy thread serving the request reads its queue. A request
    may also register a ``direct`` writer: a complete (non-streamed) answer is then written
    to its client by the reading thread itself, one loopback send, and the proxy thread
    only learns that it was (``{"type": "_written"}``): one thread hand-off less on every
    call's path. Frames for an id nobody waits for (cancelled, timed out) are dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, queue.SimpleQueue[dict[str, Any]]] = {}
        self._direct: dict[str, Callable[[dict[str, Any]], bool]] = {}
        self.lost: str | None = None

    def open(
        self, request_id: str, direct: Callable[[dict[str, Any]], bool] | None = None
    ) -> queue.SimpleQueue[dict[str, Any]] | None:
        """A queue for ``request_id``'s answer, or None when the channel is gone."""
        with self._cond:
            if self.lost is not None:
                return None
            inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
            self._pending[request_id] = inbox
            if direct is not None:
                self._direct[request_id] = direct
            return inbox

    def forget(self, request_id: str) -> None:
        with self._cond:
            self._pending.pop(request_id, None)
            self._direct.pop(request_id, None)
            self._cond.notify_all()

    def deliver(self, frame: dict[str, Any]) -> bool:
        request_id = str(frame.get("id"))
        with self._cond:
            inbox = self._pending.get(request_id)
            direct = self._direct.get(request_id)
        if inbox is None:
            return False
        if direct is not None and frame.get("type") == "llm_response" and direct(frame):
            inbox.put({"type": "_written"})
            return True
        inbox.put(frame)
        return True

    def channel_lost(self, reason: str, drain_s: float = LLM_DRAIN_S) -> None:
        """Every waiting request is answered 502 (``reason``); wait up to ``drain_s`` for
        the proxy threads to write those answers."""
        with self._cond:
            self.lost = reason
            for inbox in self._pending.values():
                inbox.put({"type": "_lost", "error": reason})
            self._cond.wait_for(lambda: not self._pending, drain_s)
