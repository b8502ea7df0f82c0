"""The host's answer to one LLM call, written back to the SDK that made it.

A ``Call`` waits for the answer frames of its request (``LlmRouter`` puts them in its
queue) and writes them to the client: a complete ``llm_response`` in one send
(``write_full``), a stream with chunked transfer encoding, one chunk per
``llm_response_chunk`` as it arrives. Errors of the proxy itself (``refuse``) go out in
the provider's error shape; a client that leaves, or a host that stays silent for
``timeout_s``, ends the call (``llm_cancel`` tells the host).
"""

from __future__ import annotations

import contextlib
import json
import queue
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import http_exchange, llm_router, protocol
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    http_exchange, llm_router = load("http_exchange"), load("llm_router")
    protocol = load("protocol")

if TYPE_CHECKING:
    from .channel import Sender

LLM_CLIENT_CHECK_S = 0.5
"""While it waits for the host, a proxy thread checks this often whether its client left."""


def _client_gone(sock: socket.socket) -> bool:
    """Has the HTTP client closed its connection? (It sends nothing while it waits.)"""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def header_items(headers: Any) -> list[tuple[str, str]]:
    """The host's response headers that may go to the client (no framing, no CR/LF)."""
    if not isinstance(headers, dict):
        return []
    items: list[tuple[str, str]] = []
    for name, value in headers.items():
        key = str(name).strip().lower()
        if not key or key in protocol.LLM_HOP_HEADERS or any(c in key for c in " :\r\n"):
            continue
        items.append((key, " ".join(str(value).split())))
    return items


def refuse(client: http_exchange.Exchange, provider: str, status: int, message: str) -> None:
    """An error of the proxy itself, in ``provider``'s shape; the connection is closed
    after it (the request body may be unread) and the SDK is told not to retry. Sent at
    once: ``LlmProxy.handle`` forgets the request only after its answer left (a dying channel
    waits for that before the agent exits)."""
    data = json.dumps(protocol.llm_error_body(provider, status, message)).encode()
    client.close_connection = True
    client.send_response(status)
    client.send_header("Content-Type", "application/json")
    client.send_header("Content-Length", str(len(data)))
    client.send_header("Connection", "close")
    client.send_header("x-should-retry", "false")
    client.end_headers()
    client.write(data)
    with contextlib.suppress(OSError):
        client.flush()


def write_full(client: http_exchange.Exchange, provider: str, frame: dict[str, Any]) -> None:
    """A complete ``llm_response`` to the client: status, headers and body, one send."""
    status = frame.get("status")
    if not isinstance(status, int) or not 100 <= status <= 599:
        refuse(client, provider, 502, f"the wflo host sent an invalid status {status!r}")
        return
    headers = header_items(frame.get("headers"))
    try:
        body = protocol.b64decode(frame.get("body_b64") or "")
    except protocol.ProtocolError as exc:
        refuse(client, provider, 502, f"the wflo host sent an invalid body: {exc}")
        return
    if not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    try:
        client.send_response(status)
        for name, value in headers:
            client.send_header(name, value)
        client.send_header("Content-Length", str(len(body)))
        client.end_headers()
        client.write(body)
        client.flush()  # headers and body: one send
    except OSError:
        client.close_connection = True


class Call:
    """One LLM call sent to the host as ``request_id``, waiting for its answer frames in
    ``inbox`` and writing them to ``client``."""

    def __init__(
        self,
        client: http_exchange.Exchange,
        provider: str,
        request_id: str,
        inbox: queue.SimpleQueue[dict[str, Any]],
        router: llm_router.LlmRouter,
        sender: Sender,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.provider = provider
        self.request_id = request_id
        self.inbox = inbox
        self.router = router
        self.sender = sender
        self.timeout_s = timeout_s

    def next_frame(self) -> dict[str, Any] | None:
        """The next answer frame, ``{"type": "_timeout"}`` after ``timeout_s`` of silence, or
        None if the client went away meanwhile (the host is told with ``llm_cancel``)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.cancel(f"no answer from the host within {self.timeout_s:g} s")
                return {"type": "_timeout"}
            try:
                return self.inbox.get(timeout=min(left, LLM_CLIENT_CHECK_S))
            except queue.Empty:
                pass
            if _client_gone(self.client.connection):
                self.cancel("the client closed the connection")
                self.client.close_connection = True
                return None

    def cancel(self, reason: str) -> None:
        self.router.forget(self.request_id)
        if self.router.lost is None:
            self.sender.send({"type": "llm_cancel", "id": self.request_id, "reason": reason})

    def answer(self, claim: threading.Lock) -> None:
        """Wait for the host's answer and write it, unless the reading thread did
        (``claim``: whoever takes it writes the answer)."""
        client, provider = self.client, self.provider
        frame = self.next_frame()
        if frame is not None and frame["type"] == "_written":
            return  # the reading thread wrote the answer
        if not claim.acquire(blocking=False):
            # the reading thread is writing the answer right now: let it finish first
            with contextlib.suppress(queue.Empty):
                while self.inbox.get(timeout=llm_router.LLM_DRAIN_S)["type"] != "_written":
                    pass
            return
        if frame is None:
            return
        kind = frame["type"]
        if kind == "_timeout":
            refuse(
                client, provider, 504, f"the wflo host sent no answer within {self.timeout_s:g} s"
            )
            return
        if kind == "_lost":
            refuse(client, provider, 502, f"the wflo host is gone: {frame.get('error')}")
            return
        if kind == "llm_response":
            write_full(client, provider, frame)
            return
        if kind != "llm_response_start":
            refuse(client, provider, 502, f"the wflo host answered with {kind} first")
            return
        status = frame.get("status")
        if not isinstance(status, int) or not 100 <= status <= 599:
            refuse(client, provider, 502, f"the wflo host sent an invalid status {status!r}")
            return
        self._stream(status, header_items(frame.get("headers")))

    def _stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Chunked transfer encoding: every ``llm_response_chunk`` goes out as it arrives,
        so the SDK's SSE parser sees each event at once."""
        client = self.client
        if not any(name == "content-type" for name, _ in headers):
            headers.append(("content-type", "text/event-stream"))
        is_sse = any(n == "content-type" and "event-stream" in v for n, v in headers)
        try:
            client.send_response(status)
            for name, value in headers:
                client.send_header(name, value)
            client.send_header("Transfer-Encoding", "chunked")
            client.end_headers()
            client.flush()
        except OSError:
            self.cancel("the client closed the connection")
            client.close_connection = True
            return
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            kind = frame["type"]
            error: str | None = None
            if kind == "llm_response_chunk":
                try:
                    data = protocol.b64decode(frame.get("data_b64") or "")
                except protocol.ProtocolError as exc:
                    error = f"the wflo host sent an invalid chunk: {exc}"
                    self.cancel(error)
                else:
                    if not data:
                        continue
                    try:
                        client.write(b"%x\r\n%b\r\n" % (len(data), data))
                        client.flush()
                    except OSError:
                        self.cancel("the client closed the connection")
                        client.close_connection = True
                        return
                    continue
            elif kind == "llm_response_end":
                error = None if frame.get("error") is None else str(frame.get("error"))
            elif kind == "_timeout":
                error = f"the wflo host sent nothing for {self.timeout_s:g} s during the stream"
            elif kind == "_lost":
                error = f"the wflo host is gone: {frame.get('error')}"
            else:
                error = f"the wflo host sent {kind} inside a stream"
                self.cancel(error)
            tail = b""
            if error is not None:
                if not is_sse:  # nothing the client can parse: cut the body short
                    client.close_connection = True
                    return
                event = protocol.llm_sse_error(self.provider, error)
                tail = b"%x\r\n%b\r\n" % (len(event), event)
            try:
                client.write(tail + b"0\r\n\r\n")
                client.flush()
            except OSError:
                client.close_connection = True
            return
