"""Starting one sandbox: the host listens on a fresh Unix socket, the launcher starts the
agent, and the agent must connect and say ``ready`` with its per-sandbox token.

``launch_sandbox`` never leaks anything when this fails (the listener, the socket, a
half-started agent and the socket directory all go); once the agent connected, the
socket is unlinked so that nobody else can connect.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import select
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.agent.protocol import (
    HANDSHAKE_MAX_FRAME_BYTES,
    Frame,
    ProtocolError,
    recv_frame,
)
from wflo_jupyter.sandbox.backend import AgentHandle, AgentLauncher
from wflo_jupyter.sandbox.channel import Box
from wflo_jupyter.sandbox.types import SOCKET_NAME, LaunchRequest, SandboxLimits


def launch_sandbox(
    launcher: AgentLauncher,
    sock_dir: Path,
    *,
    limits: SandboxLimits,
    labels: Mapping[str, str],
    image: str,
    agent_dir: Path,
    role: str,
    ready_timeout_s: float,
) -> Box:
    """Start one sandbox whose socket lives in ``sock_dir`` and handshake its agent.
    Never leaks one when this fails (``sock_dir`` is removed then)."""
    sock_path = sock_dir / SOCKET_NAME
    listener: socket.socket | None = None
    handle: AgentHandle | None = None
    conn: socket.socket | None = None
    launched: Box | None = None
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(4)
        launcher.grant_access(sock_dir, sock_path)
        token = secrets.token_hex(16)
        handle = launcher.launch(
            LaunchRequest(
                sock_dir=sock_dir,
                socket_name=SOCKET_NAME,
                token=token,
                limits=limits,
                labels=labels,
                image=image,
                agent_dir=agent_dir,
                role=role,
            )
        )
        conn, ready = accept_agent(listener, handle, token, ready_timeout_s)
        box = Box(handle, conn, sock_dir, limits, ready)
        conn = None
        handle = None
        launched = box
        return box
    finally:
        if listener is not None:
            listener.close()
        with contextlib.suppress(OSError):
            sock_path.unlink()  # nobody else can connect from now on
        if conn is not None:
            conn.close()
        if handle is not None:  # failed half way: never leak it
            handle.destroy()
        if launched is None:
            shutil.rmtree(sock_dir, ignore_errors=True)


def accept_agent(
    listener: socket.socket, handle: AgentHandle, token: str, ready_timeout_s: float
) -> tuple[socket.socket, Frame]:
    """Wait for the agent to connect and say ``ready`` with the right token."""
    deadline = time.monotonic() + ready_timeout_s
    next_check = time.monotonic() + 0.5
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise SandboxError(
                f"the sandbox agent did not connect within {ready_timeout_s:g} s"
                + _logs_hint(handle)
            )
        readable, _, _ = select.select([listener], [], [], min(0.1, deadline - now))
        if not readable:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 0.5
                code = handle.poll()
                if code is not None:
                    raise SandboxError(
                        f"the sandbox agent exited at start (exit code {code})" + _logs_hint(handle)
                    )
            continue
        conn, _ = listener.accept()
        try:
            conn.settimeout(max(0.5, deadline - time.monotonic()))
            frame = recv_frame(conn, HANDSHAKE_MAX_FRAME_BYTES)
            conn.settimeout(None)
        except (ProtocolError, OSError):
            conn.close()
            continue
        presented = frame.get("token")
        if (
            frame["type"] == "ready"
            and isinstance(presented, str)
            and hmac.compare_digest(presented.encode(), token.encode())
        ):
            return conn, frame
        conn.close()


def _logs_hint(handle: AgentHandle) -> str:
    logs = handle.logs_tail().strip()
    last = logs.splitlines()[-1].strip() if logs else ""
    return f": {last}" if last else ""


__all__ = ["accept_agent", "launch_sandbox"]
