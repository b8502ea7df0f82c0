"""The sandbox agent: runs ``%%wflo`` cells inside the session container (stdlib only).

Started as ``python3 -I /opt/wflo-agent/agent.py /run/wflo/<socket>`` (the per-container
token in ``WFLO_AGENT_TOKEN``), it connects back to the host over the Unix socket, says
``ready`` and then runs ``exec`` frames one at a time. This file is the entry point: it
reads the channel and dispatches the frames; its parts live next to it, one file each:

- ``channel.py``: the ``Sender`` (one writer thread, no half frames on the wire);
- ``kernel.py``: the persistent namespace, cells, interrupts;
- ``async_cells.py``: top-level ``await`` on the session's event loop, cell frames;
- ``capture.py``: live output of fds 1/2 and the per-cell output cap;
- ``display.py``: ``display()``, mime bundles and inline matplotlib figures;
- ``out_values.py``: ``--out`` values, in safe formats only;
- ``llm_proxy.py``, ``llm_answer.py``, ``llm_router.py``, ``llm_routes.py``,
  ``http_exchange.py``: LLM calls through a loopback HTTP proxy, one ``llm_request``
  frame per call;
- ``runtime.py`` (private fds, threads, diagnostics), ``formats.py`` (wording of
  messages), ``protocol.py`` (the frames, shared with the host) and ``loader.py``.

Inside the sandbox there is no package: the parts are loaded by path (``loader.py``,
which this file runs by hand). On the host the folder is a package and they are imported.

Hardening of the channel "as far as practical": the socket lives on a high, close-on-exec
fd that subprocesses never inherit, reading/writing it happens only in agent threads,
and a cell that closes or corrupts it just kills its own session (the host notices).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import sys
import traceback
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import channel, kernel, llm_proxy, llm_router, protocol, runtime
else:  # a script inside the sandbox: no package, the parts are loaded by path
    _loader = types.ModuleType("_wflo_agent_loader")  # loader.py: the one part run by hand
    _loader.__file__ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loader.py")
    sys.modules[_loader.__name__] = _loader
    with open(_loader.__file__, encoding="utf-8") as _source:
        exec(compile(_source.read(), _loader.__file__, "exec"), _loader.__dict__)
    from _wflo_agent_loader import load

    channel, kernel, llm_proxy = load("channel"), load("kernel"), load("llm_proxy")
    llm_router, protocol, runtime = load("llm_router"), load("protocol"), load("runtime")


class Agent:
    """Connects to the host, then serves frames until ``shutdown`` or the host goes away."""

    def __init__(
        self, socket_path: str, token: str, llm_timeout_s: float = protocol.LLM_IDLE_TIMEOUT_S
    ) -> None:
        runtime.keep_diag_fd()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(socket_path)
        fd = runtime.high_fd(raw.detach())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
        self.token = token
        self.sender = channel.Sender(self.sock, self.diag)
        self.kernel = kernel.Kernel(self.sender)
        identity = os.fstat(fd)
        self._channel_identity = (identity.st_dev, identity.st_ino)
        self._channel_fd = fd
        self.kernel.channel_check = self.channel_intact
        self.inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.router = llm_router.LlmRouter()
        self.sender.on_lost = lambda: self.router.channel_lost("the channel to the host broke")
        self.proxy: llm_proxy.LlmProxy | None = None
        try:
            self.proxy = llm_proxy.LlmProxy(
                self.sender, self.router, lambda: self.kernel.current_id, llm_timeout_s
            )
        except OSError as exc:  # no loopback interface: cells run, LLM calls cannot
            self.diag(f"wflo-agent: no LLM proxy ({exc})")

    def channel_intact(self) -> bool:
        """Is the channel fd still open and still the socket the agent connected?"""
        try:
            info = os.fstat(self._channel_fd)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._channel_identity

    def diag(self, message: str) -> None:
        """A line for ``docker logs`` (the container's original stderr), never the cell."""
        runtime.diag(message)

    def serve(self) -> int:
        self.kernel.install()
        if self.proxy is not None:
            self.proxy.start()
            os.environ.update(self.proxy.environment())  # cells and subprocesses inherit it
        runtime.agent_thread("wflo-agent-recv", self._receive)
        self.sender.send(
            {
                "type": "ready",
                "token": self.token,
                "protocol": protocol.PROTOCOL_VERSION,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "llm_proxy": None if self.proxy is None else {"port": self.proxy.port},
            }
        )
        while True:
            try:
                frame = self.inbox.get()
                if frame["type"] == "shutdown":
                    self.sender.close()
                    return 0
                self.kernel.run(frame)
            except KeyboardInterrupt:  # a late interrupt between cells: nothing to stop
                signal.signal(signal.SIGINT, kernel.sigint_outside_cell)

    def _receive(self) -> None:
        runtime.block_sigint()
        while True:
            try:
                frame = protocol.recv_frame(self.sock)
            except protocol.ChannelClosed:
                self.router.channel_lost("the host closed the channel")
                os._exit(0)
            except (protocol.ProtocolError, OSError) as exc:
                self.diag(f"wflo-agent: channel error ({exc}); exiting")
                self.router.channel_lost(f"channel error ({exc})")
                os._exit(channel.EXIT_CHANNEL_LOST)
            kind = frame["type"]
            if kind in protocol.LLM_HOST_FRAME_TYPES:
                self.router.deliver(frame)  # never blocks; unknown ids are dropped
            elif kind == "ping":
                self.sender.send({"type": "pong", "id": frame.get("id")})
            elif kind == "interrupt":
                cell_id = frame.get("id")
                self.kernel.interrupt(None if cell_id is None else str(cell_id))
            elif kind == "exec":
                # on the wire before the cell can start (written now, not queued: a cell
                # that kills the agent at once must not be taken for one that never ran)
                self.sender.send_now({"type": "accepted", "id": frame.get("id")})
                self.inbox.put(frame)
            elif kind == "shutdown":
                self.inbox.put(frame)
            # unknown frames are ignored


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python3 -I agent.py /run/wflo/<socket>\n")
        return 2
    token = os.environ.pop("WFLO_AGENT_TOKEN", "")
    llm_timeout_s = protocol.LLM_IDLE_TIMEOUT_S
    with contextlib.suppress(ValueError):
        llm_timeout_s = float(os.environ.pop("WFLO_AGENT_LLM_TIMEOUT_S", "") or llm_timeout_s)
    agent = Agent(argv[1], token, llm_timeout_s)
    try:
        code = agent.serve()
    except BaseException:
        agent.diag("wflo-agent: internal error\n" + traceback.format_exc())
        os._exit(70)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
