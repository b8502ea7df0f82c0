"""Output capture: fds 1 and 2 of the agent become pipes whose text is sent live as
``stream`` frames, and the per-cell output cap (``OutputBudget``).

``print``, C extensions and subprocesses all write to fds 1/2, so all of it is captured;
text is sent line by line, and a partial line after at most ``FLUSH_INTERVAL_S``. Text
and display data of a cell count against its cap; past it, one notice, and the rest of
the cell's output is dropped while the cell keeps running.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import formats, runtime
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    formats, runtime = load("formats"), load("runtime")

if TYPE_CHECKING:
    from .channel import Sender

DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
FLUSH_INTERVAL_S = 0.05
"""A partial line (no newline yet) is sent after at most this long."""
STREAM_CHUNK_CHARS = 64 * 1024
SYNC_TIMEOUT_S = 5.0


class OutputBudget:
    """Per-cell output cap: text and display data count against it; past it, one notice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cap = DEFAULT_OUTPUT_CAP
        self.used = 0
        self.exceeded = False

    def reset(self, cap: int) -> None:
        with self._lock:
            self.cap = max(0, cap)
            self.used = 0
            self.exceeded = False

    def admit_text(self, text: str) -> tuple[str, bool]:
        """(the part of ``text`` that fits, whether the cap was reached just now)."""
        with self._lock:
            if self.exceeded:
                return "", False
            raw = text.encode("utf-8", "surrogatepass")
            if self.used + len(raw) <= self.cap:
                self.used += len(raw)
                return text, False
            room = self.cap - self.used
            self.used = self.cap
            self.exceeded = True
            return raw[:room].decode("utf-8", "ignore"), True

    def admit_size(self, size: int) -> tuple[bool, bool]:
        """(whether an item of ``size`` bytes fits, whether the cap was reached just now)."""
        with self._lock:
            if self.exceeded:
                return False, False
            if self.used + size <= self.cap:
                self.used += size
                return True, False
            self.used = self.cap
            self.exceeded = True
            return False, True

    def notice(self) -> str:
        return (
            f"\n[wflo: output cap of {formats.format_bytes(self.cap)} reached; "
            "the rest of this cell's output was dropped]\n"
        )


class OutputCapture:
    """fds 1 and 2 become pipes; a thread reads them and sends ``stream`` frames live.

    The agent keeps a private copy of each pipe's write end, so a cell that closes fd 1
    can be repaired before the next cell (``ensure_stdio``) and the reader never sees EOF.
    ``sync()`` returns once everything written to fds 1/2 before the call was sent.
    """

    def __init__(
        self,
        sender: Sender,
        budget: OutputBudget,
        current_id: Callable[[], str | None],
    ) -> None:
        self._sender = sender
        self._budget = budget
        self._current_id = current_id
        self._names: dict[int, str] = {}
        self._write_ends: dict[str, int] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._pending: dict[str, str] = {"stdout": "", "stderr": ""}
        self._pending_since: float | None = None
        for target, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            read_end = runtime.high_fd(read_end)
            os.set_blocking(read_end, False)
            os.dup2(write_end, target, inheritable=True)
            self._write_ends[name] = runtime.high_fd(write_end)
            self._names[read_end] = name
            self._decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        ctl_read, ctl_write = os.pipe()
        self._ctl_read = runtime.high_fd(ctl_read)
        self._ctl_write = runtime.high_fd(ctl_write)
        os.set_blocking(self._ctl_read, False)
        self._cond = threading.Condition()
        self._sync_requested = 0
        self._sync_done = 0
        self._thread = runtime.agent_thread("wflo-agent-capture", self._run)

    def ensure_stdio(self) -> None:
        """Point fds 1/2 back at the capture pipes if a cell closed or redirected them."""
        for target, name in ((1, "stdout"), (2, "stderr")):
            mine = os.fstat(self._write_ends[name])
            try:
                now = os.fstat(target)
                same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
            except OSError:
                same = False
            if not same:
                os.dup2(self._write_ends[name], target, inheritable=True)

    def sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        with self._cond:
            self._sync_requested += 1
            target = self._sync_requested
            os.write(self._ctl_write, b"s")
            self._cond.wait_for(lambda: self._sync_done >= target, timeout_s)

    # reader thread -------------------------------------------------------------------

    def _run(self) -> None:
        runtime.block_sigint()
        poller = select.poll()
        for fd in (*self._names, self._ctl_read):
            poller.register(fd, select.POLLIN)
        while True:
            timeout_ms: float | None = None
            if self._pending_since is not None:
                left = self._pending_since + FLUSH_INTERVAL_S - time.monotonic()
                timeout_ms = max(0.0, left * 1000)
            events = poller.poll(timeout_ms)
            sync_target: int | None = None
            for fd, _event in events:
                if fd == self._ctl_read:
                    with self._cond:
                        sync_target = self._sync_requested
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._ctl_read, 4096)
                elif fd in self._names and not self._read(fd):
                    poller.unregister(fd)
            if sync_target is not None:
                for fd in self._names:
                    while self._read(fd):
                        pass
                self._flush_all()
                with self._cond:
                    self._sync_done = max(self._sync_done, sync_target)
                    self._cond.notify_all()
            elif (
                self._pending_since is not None
                and time.monotonic() >= self._pending_since + FLUSH_INTERVAL_S
            ):
                self._flush_all()

    def _read(self, fd: int) -> bool:
        """Read what is there on ``fd``; False when nothing was (or it hit EOF)."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        except OSError:
            return False
        if not data:
            return False
        name = self._names[fd]
        text = self._decoders[name].decode(data)
        if text:
            self._pending[name] += text
            buffered = self._pending[name]
            cut = buffered.rfind("\n") + 1
            if len(buffered) >= STREAM_CHUNK_CHARS:
                cut = len(buffered)
            if cut:
                self._pending[name] = buffered[cut:]
                self._emit(name, buffered[:cut])
            if any(self._pending.values()):
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
            else:
                self._pending_since = None
        return True

    def _flush_all(self) -> None:
        for name, text in self._pending.items():
            if text:
                self._pending[name] = ""
                self._emit(name, text)
        self._pending_since = None

    def _emit(self, name: str, text: str) -> None:
        cell_id = self._current_id()
        if cell_id is None:  # output between cells (a daemon process): nobody to show it to
            return
        text, reached = self._budget.admit_text(text)
        for start in range(0, len(text), STREAM_CHUNK_CHARS):
            chunk = text[start : start + STREAM_CHUNK_CHARS]
            self._sender.send({"type": "stream", "id": cell_id, "name": name, "text": chunk})
        if reached:
            self._sender.send(
                {"type": "stream", "id": cell_id, "name": "stderr", "text": self._budget.notice()}
            )
