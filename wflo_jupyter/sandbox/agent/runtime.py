"""The agent's own process plumbing: private fds, its threads and its diagnostics.

- agent-private fds (the channel socket, pipe read ends, the proxy's listener, the
  diagnostics fd) are moved to high, close-on-exec numbers that cells and subprocesses
  never inherit;
- every agent thread blocks SIGINT (SIGINT is for the main thread, where cells run) and
  ends the whole agent loudly if it dies unexpectedly;
- diagnostics go to the agent's original stderr (``docker logs``), never into a cell.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import traceback
from collections.abc import Callable

HIGH_FD = 900
"""Agent-private fds (channel socket, pipe read ends) are moved at or above this number."""

_diag_fd = 2
"""Where agent diagnostics go: the container's original stderr (``docker logs``), moved
to a private fd once fds 1/2 are captured; never a cell's output."""


def high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` at or above ``HIGH_FD``; ``fd`` is closed."""
    try:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    except OSError:  # RLIMIT_NOFILE below HIGH_FD: any free number will do
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def block_sigint() -> None:
    """Called first in every agent thread: SIGINT is for the main thread (user code)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def keep_diag_fd() -> None:
    """Diagnostics keep going to the current stderr after fds 1/2 are captured: a private
    duplicate of fd 2 becomes their target (called once, before the capture)."""
    global _diag_fd
    _diag_fd = high_fd(os.dup(2))


def diag(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(_diag_fd, (message.rstrip("\n") + "\n").encode("utf-8", "replace"))


def agent_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    """A daemon thread whose unexpected death ends the agent loudly (the host then
    reports a dead agent) instead of leaving it half-working."""

    def run() -> None:
        try:
            target()
        except BaseException:
            diag(f"wflo-agent: thread {name} failed\n{traceback.format_exc()}")
            os._exit(70)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
