"""One running sandbox and its framed channel: the host's end of the Unix socket the agent
connected to (``sandbox.agent.protocol`` frames), and the agent's handle.

``Box`` sends frames (one writer at a time: the cell loop and the LLM workers share it),
reads what arrives within a timeout, tells whether the agent went away between cells,
and removes the sandbox with its socket directory.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import threading
from pathlib import Path

from wflo_jupyter.sandbox.agent.protocol import (
    MAX_FRAME_BYTES,
    ChannelClosed,
    Frame,
    FrameDecoder,
    encode_frame,
)
from wflo_jupyter.sandbox.backend import AgentHandle
from wflo_jupyter.sandbox.types import SandboxLimits


class Box:
    """One running sandbox (its agent handle) and its channel."""

    def __init__(
        self,
        handle: AgentHandle,
        sock: socket.socket,
        sock_dir: Path,
        limits: SandboxLimits,
        ready: Frame,
    ) -> None:
        self.handle = handle
        self.sock = sock
        self.sock_dir = sock_dir
        self.limits = limits
        self.ready = ready
        self.decoder = FrameDecoder(MAX_FRAME_BYTES)
        self.send_lock = threading.Lock()
        self.cells = 0
        """Cells the agent accepted (so ran, or began to): state that its death loses."""
        self.destroyed = False

    @property
    def container_id(self) -> str:
        return self.handle.id

    def send(self, frame: Frame) -> None:
        data = encode_frame(frame)
        with self.send_lock:
            self.sock.sendall(data)

    def read(self, timeout_s: float) -> list[Frame]:
        """Frames that arrive within ``timeout_s`` ([] if none); ``ChannelClosed`` at EOF."""
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout_s))
        if not readable:
            return []
        data = self.sock.recv(1 << 20)
        if not data:
            self.decoder.close()
            raise ChannelClosed("the sandbox agent closed the channel")
        return self.decoder.feed(data)

    def channel_alive(self) -> bool:
        """False if the agent has gone away since the last cell (EOF or junk waiting)."""
        try:
            waiting = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(waiting)  # b"": EOF, the agent is gone

    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        """(exit code or None if it had to be killed, OOM-killed?) once the sandbox ended."""
        return self.handle.wait_exit(timeout_s)

    def kill(self) -> None:
        self.handle.kill()

    def destroy(self) -> None:
        """Close the channel, remove the sandbox and the socket directory (idempotent)."""
        if self.destroyed:
            return
        self.destroyed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        self.handle.destroy()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


__all__ = ["Box"]
