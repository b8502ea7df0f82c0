"""The agent's LLM calls on the host: each ``llm_request`` frame goes to the gateway's
handler on a worker thread (up to 16), so the cell loop keeps delivering output while a
call runs; a fast path (a cache hit) may answer on the reading thread first. Every request
gets exactly one answer: a 503 when no gateway is attached.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from wflo_jupyter.sandbox.agent.protocol import Frame, llm_error_response, llm_route
from wflo_jupyter.sandbox.channel import Box

LlmHandler = Callable[[Frame, Callable[[Frame], None]], None]
LlmFastPath = Callable[[Frame, Callable[[Frame], None]], bool]
log = logging.getLogger(__name__)


class LlmRelay:
    """The worker threads of one session's LLM calls. ``lock`` is the session's lock: the
    pool is made, drained and detached under it."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()

    def serve(
        self, box: Box, frame: Frame, handler: LlmHandler | None, fast: LlmFastPath | None
    ) -> None:
        """Hand an ``llm_request`` to ``handler`` on a worker thread (the read loop must
        keep delivering output); every request gets exactly one answer."""

        def send(reply: Frame) -> None:
            with contextlib.suppress(OSError):
                box.send(reply)

        if handler is not None and fast is not None:
            try:
                if fast(frame, send):
                    return
            except Exception as exc:  # the worker path still answers it
                log.warning("LLM fast path failed: %s: %s", type(exc).__name__, exc)
        if handler is None:
            route = llm_route(str(frame.get("path", "")))
            guess = "anthropic" if frame.get("provider") == "anthropic" else "openai"
            send(
                llm_error_response(
                    str(frame.get("id", "")),
                    route[0] if route else guess,
                    503,
                    "no LLM gateway is attached to this sandbox",
                )
            )
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="wflo-llm")
            pool = self._pool
        future = pool.submit(handler, frame, send)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    def drain(self, timeout_s: float) -> None:
        """Wait for LLM calls still being recorded."""
        with self._lock:
            pending = list(self._futures)
        if pending:
            wait_futures(pending, timeout=timeout_s)

    def detach(self) -> ThreadPoolExecutor | None:
        """The pool, which the relay forgets (the caller shuts it down; a later request
        makes a new one)."""
        pool, self._pool = self._pool, None
        return pool


__all__ = ["LlmFastPath", "LlmHandler", "LlmRelay"]
