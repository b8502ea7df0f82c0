"""The agent's half of the framed channel to the host: the ``Sender``.

Frames are serialised in the calling thread and ONE thread writes them to the socket, so
an interrupt in the main thread can never leave half a frame on the wire. A broken
socket ends the agent (``EXIT_CHANNEL_LOST``): the host then reports the lost session.
(Reading the channel and dispatching frames is the entry point's job, ``agent.py``.)
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import protocol, runtime
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    protocol, runtime = load("protocol"), load("runtime")

EXIT_CHANNEL_LOST = 75
"""Exit code when the channel to the host broke or a cell closed it."""


class Sender:
    """Serialises frames in the calling thread; ONE thread writes them to the socket, so
    an interrupt in the main thread can never leave half a frame on the wire.

    ``send_now`` writes from the calling thread instead, under the same lock as the
    writer thread: for the LLM proxy's threads (SIGINT blocked, never interrupted), whose
    requests then skip a thread hand-off on the way to the host."""

    def __init__(self, sock: socket.socket, diag: Callable[[str], None]) -> None:
        self._sock = sock
        self.diag = diag
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self.on_lost: Callable[[], None] | None = None
        """Called when the socket broke, just before the agent exits."""
        self._thread = runtime.agent_thread("wflo-agent-send", self._run)

    def send(self, frame: dict[str, Any]) -> None:
        self._queue.put(protocol.encode_frame(frame))

    def send_now(self, frame: dict[str, Any]) -> None:
        """Write ``frame`` from this thread (never the main thread: see the class)."""
        self._write(protocol.encode_frame(frame))

    def close(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        runtime.block_sigint()
        while True:
            data = self._queue.get()
            if data is None:
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            with self._write_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self.diag(f"wflo-agent: the channel to the host broke ({exc}); exiting")
            if self.on_lost is not None:
                self.on_lost()
            os._exit(EXIT_CHANNEL_LOST)
