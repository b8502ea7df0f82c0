"""The framed channel between the host and the sandbox agent (stdlib only).

Used by BOTH sides: the host imports it as ``wflo_jupyter.sandbox.agent.protocol``; the
agent loads this file by path inside the container. It must therefore import nothing
outside the standard library and run on the runtime image's Python (3.11).

Wire format
-----------
One frame = a 4-byte big-endian unsigned length N, then N bytes of UTF-8 JSON encoding
one object with a ``"type"`` key. Binary fields are base64 text. A frame longer than the
receiver's limit (``MAX_FRAME_BYTES`` unless configured lower) is a ``ProtocolError``, as
is invalid JSON, a non-object, a missing type, or a connection that ends mid-frame.

Frames, host -> agent
---------------------
``exec``       ``{id, code, inputs: {name: {format: "pickle", data: b64}}, outputs: [name],
               output_cap: int}`` run one cell in the persistent namespace.
``interrupt``  ``{id}`` raise ``KeyboardInterrupt`` in the running cell (if ``id`` matches
               or is null).
``ping``       ``{id}`` answered by ``pong`` ``{id}`` (liveness, latency).
``shutdown``   ``{}`` the agent exits.
``llm_response`` RESERVED for the gateway issue: ``{id, call_id, ok, status, body | error}``
               answers an ``llm_request``. The current agent ignores it.

Frames, agent -> host
---------------------
``ready``      ``{token, protocol, pid, python}`` first frame after connecting; ``token`` is
               the per-container secret the host gave the agent (proves which peer this is).
``stream``     ``{id, name: "stdout" | "stderr", text}`` live output of cell ``id``.
``display``    ``{id, data: {mime: value}, metadata: {}, kind: "display_data" |
               "execute_result"}`` a Jupyter mime bundle (binary mimes are base64 text,
               ``application/json`` is a JSON value, everything else text).
``result``     ``{id, ok, error: {ename, evalue, traceback} | null, outputs: {name:
               {format, data, type, ...} | {error, type}}, execution_count}`` end of cell.
``pong``       ``{id}``.
``llm_request`` RESERVED for the gateway issue: ``{id, call_id, provider, method, path,
               headers, body}`` an LLM call made by the cell through the agent's loopback
               proxy; the host prices, reserves, calls and answers with ``llm_response``.

``--out`` value formats (agent -> host; see ``wflo_jupyter.sandbox.values``): ``json``
(``data`` is JSON text), ``bytes`` (base64), ``npy`` (base64 of ``numpy.save`` with
``allow_pickle=False``; ``kind`` ``array`` | ``scalar``), ``arrow`` (base64 of an Arrow IPC
stream; ``kind`` ``dataframe`` | ``series``). Nothing else is ever accepted by the host.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""Largest frame either side accepts (values crossing the boundary are at most this)."""
HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024
"""Largest frame the host accepts before the peer proved itself with ``ready``."""

HOST_FRAME_TYPES = frozenset({"exec", "interrupt", "ping", "shutdown", "llm_response"})
AGENT_FRAME_TYPES = frozenset({"ready", "stream", "display", "result", "pong", "llm_request"})

Frame = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame (or the stream ended mid-frame)."""


class ChannelClosed(ProtocolError):
    """The peer closed the connection cleanly, between frames."""


def encode_frame(frame: Frame, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """``frame`` -> header + JSON body; ``ProtocolError`` if it is not sendable."""
    if not isinstance(frame.get("type"), str):
        raise ProtocolError("a frame needs a string 'type'")
    try:
        body = json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"frame {frame['type']!r} is not JSON-serialisable: {exc}") from None
    if len(body) > max_bytes:
        raise ProtocolError(
            f"frame {frame['type']!r} is {len(body)} bytes, over the {max_bytes}-byte limit"
        )
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Frame:
    """One frame's JSON body -> the frame dict (validated)."""
    try:
        frame = json.loads(body.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame is a JSON {type(frame).__name__}, not an object")
    if not isinstance(frame.get("type"), str):
        raise ProtocolError("frame has no string 'type'")
    return frame


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get the complete frames."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._need: int | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return frames
                (length,) = HEADER.unpack_from(self._buffer)
                if length > self.max_bytes:
                    raise ProtocolError(
                        f"incoming frame of {length} bytes is over the {self.max_bytes}-byte limit"
                    )
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return frames
            body = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            self._need = None
            frames.append(decode_body(body))

    def close(self) -> None:
        """The stream ended: ``ProtocolError`` if it ended inside a frame."""
        if self._buffer or self._need is not None:
            raise ProtocolError(
                f"connection closed inside a frame ({len(self._buffer)} bytes of it received)"
            )


def _recv_exactly(sock: socket.socket, count: int, *, at_start: bool) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        chunk = sock.recv(min(count - len(chunks), 1 << 20))
        if not chunk:
            if at_start and not chunks:
                raise ChannelClosed("the peer closed the channel")
            raise ProtocolError(
                f"connection closed inside a frame ({len(chunks)} of {count} bytes received)"
            )
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Block until one whole frame arrived on ``sock`` (``ChannelClosed`` on a clean EOF)."""
    (length,) = HEADER.unpack(_recv_exactly(sock, HEADER.size, at_start=True))
    if length > max_bytes:
        raise ProtocolError(f"incoming frame of {length} bytes is over the {max_bytes}-byte limit")
    return decode_body(_recv_exactly(sock, length, at_start=False))


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict base64 -> bytes (``ProtocolError`` on anything else)."""
    if not isinstance(text, str):
        raise ProtocolError(f"expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ProtocolError(f"invalid base64: {exc}") from None
