"""A small, strict HTTP/1.1 server side for the LLM proxy: ``Exchange`` reads one
request head from a connection and buffers the answer to it.

``http.server`` costs tens of milliseconds to import and ~0.1 ms per request; this is the
slice of ``http.server.BaseHTTPRequestHandler`` that the proxy uses. A malformed head or
one over ``LLM_MAX_HEAD_BYTES`` raises ``BadRequest`` (the proxy answers it, then closes);
``linger`` is the server's half-close after the last answer on a connection.
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import formats
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    formats = load("formats")

LLM_MAX_HEAD_BYTES = 64 * 1024
"""Largest request line plus header block the proxy reads (414 / 431 above it)."""
LLM_MAX_HEADER_LINES = 100
LLM_LINGER_S = 1.0
"""After its last answer on a connection, how long the proxy keeps reading (and dropping)
what the client still sends: unread input would turn the close into a TCP reset that can
destroy the answer in flight (a refused body, an oversized header block)."""

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""Characters of an RFC 9110 token (methods, header names)."""
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
"""Reason phrases of the usual statuses (others go out with an empty one; clients ignore it)."""


def _has_control(value: str) -> bool:
    """Does a header value hold a control character (HTAB is allowed)?"""
    return not value.isprintable() and any((c < " " and c != "\t") or c == "\x7f" for c in value)


class BadRequest(Exception):
    """A request head the proxy will not read: answered with ``status``, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Headers:
    """A request's header fields by case-insensitive name; a repeated field's values are
    joined with ``", "`` (RFC 9110 5.3)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # lower-case names

    def get(self, name: str) -> str | None:
        return self._fields.get(name.lower())


class Exchange:
    """One request on a proxy connection and the answer to it: a strict HTTP/1.1 reader
    of the request head plus the slice of ``http.server.BaseHTTPRequestHandler`` that
    ``LlmProxy`` uses (``path``, ``headers.get``, ``send_response``/``send_header``/
    ``end_headers``, ``close_connection``, ...). Everything written is buffered and leaves in
    ONE ``sendall`` at ``flush()``; a stream flushes its head, then each chunk."""

    def __init__(self, connection: socket.socket, rfile: io.BufferedReader) -> None:
        self.connection = connection
        self.rfile = rfile
        self.command = ""
        self.path = ""
        self.request_version = "HTTP/1.1"
        self.headers = _Headers({})
        self.close_connection = True
        self._head: list[str] = []
        self._connection_header = False
        self._out: list[bytes] = []

    # the request ---------------------------------------------------------------------

    def read_head(self) -> bool:
        """Read the request line and the header fields: False when the client closed the
        connection (between requests or in the middle of a head); ``BadRequest`` when the
        head is malformed or over the limits."""
        budget = LLM_MAX_HEAD_BYTES
        line = self.rfile.readline(budget + 1)
        while line in (b"\r\n", b"\n"):  # blank lines before a request: ignored (RFC 9112)
            budget -= len(line)
            line = self.rfile.readline(budget + 1)
        if len(line) > budget:
            raise BadRequest(
                414, f"the request line is over {formats.format_bytes(LLM_MAX_HEAD_BYTES)}"
            )
        if not line.endswith(b"\n"):
            return False
        budget -= len(line)
        text = line.rstrip(b"\r\n").decode("latin-1")
        parts = text.split(" ")
        if len(parts) > 1:
            self.path = parts[1]
        if (
            len(parts) != 3
            or not parts[0]
            or not _TCHARS.issuperset(parts[0])
            or not parts[1]
            or not (parts[1].isascii() and parts[1].isprintable())
            or not (
                len(parts[2]) == 8 and parts[2][:7] == "HTTP/1." and parts[2][7] in "0123456789"
            )
        ):
            raise BadRequest(400, f"malformed HTTP/1.1 request line {text[:200]!r}")
        self.command, self.path, self.request_version = parts
        fields: dict[str, str] = {}
        lines = 0
        while True:
            line = self.rfile.readline(budget + 1)
            if len(line) > budget:
                raise BadRequest(
                    431,
                    "the request's header block is over "
                    f"{formats.format_bytes(LLM_MAX_HEAD_BYTES)}",
                )
            if not line.endswith(b"\n"):
                return False
            budget -= len(line)
            if line in (b"\r\n", b"\n"):
                break
            lines += 1
            if lines > LLM_MAX_HEADER_LINES:
                raise BadRequest(431, f"more than {LLM_MAX_HEADER_LINES} header fields")
            name, colon, value = line.decode("latin-1").partition(":")
            value = value.strip(" \t\r\n")
            if not colon or not name or not _TCHARS.issuperset(name) or _has_control(value):
                raise BadRequest(400, f"malformed header line {line[:200]!r}")
            key = name.lower()
            seen = fields.get(key)
            if seen is None:
                fields[key] = value
            elif key == "content-length":
                if value != seen:
                    raise BadRequest(400, "conflicting Content-Length headers")
            else:
                fields[key] = f"{seen}, {value}"
        self.headers = _Headers(fields)
        options = {o.strip().lower() for o in fields.get("connection", "").split(",")}
        if self.request_version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in options
        else:
            self.close_connection = "close" in options
        return True

    def read_body(self, length: int) -> bytes:
        """``length`` bytes of body (fewer if the client closed); says ``100 Continue``
        first when the client waits for it."""
        expect = str(self.headers.get("expect") or "").lower()
        if expect == "100-continue" and self.request_version != "HTTP/1.0":
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        return self.rfile.read(length)

    # the answer ----------------------------------------------------------------------

    def send_response(self, status: int) -> None:
        self._head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        self._head.append("Server: wflo-sandbox-llm-proxy")
        self._connection_header = False

    def send_header(self, name: str, value: str) -> None:
        if name.lower() == "connection":
            self._connection_header = True
            if value.lower() == "close":
                self.close_connection = True
        self._head.append(f"{name}: {value}")

    def end_headers(self) -> None:
        if not self._connection_header:
            if self.close_connection:
                self._head.append("Connection: close")
            elif self.request_version == "HTTP/1.0":
                self._head.append("Connection: keep-alive")
        self._head.append("\r\n")
        self._out.append("\r\n".join(self._head).encode("latin-1", "replace"))
        self._head = []

    def write(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> None:
        """Everything written since the last flush, in one ``sendall``."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.connection.sendall(data)


def linger(connection: socket.socket) -> None:
    """The server's half-close: FIN after the last answer, then the client's remaining
    input is read and dropped until it closes too (at most ``LLM_LINGER_S``)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LLM_LINGER_S
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(1 << 16):
                return
