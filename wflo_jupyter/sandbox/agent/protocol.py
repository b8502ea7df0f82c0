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

LLM answers (see "LLM calls" below): ``llm_response``, ``llm_response_start``,
``llm_response_chunk``, ``llm_response_end``.

Frames, agent -> host
---------------------
``ready``      ``{token, protocol, pid, python, llm_proxy: {port}}`` first frame after
               connecting; ``token`` is the per-container secret the host gave the agent
               (proves which peer this is); ``llm_proxy.port`` is the agent's loopback proxy.
``accepted``   ``{id}`` cell ``id``'s ``exec`` frame was read; sent before the cell can start,
               so a channel that ends without it means the cell never ran (the host may
               run it in a new sandbox).
``stream``     ``{id, name: "stdout" | "stderr", text}`` live output of cell ``id``.
``display``    ``{id, data: {mime: value}, metadata: {}, kind: "display_data" |
               "execute_result"}`` a Jupyter mime bundle (binary mimes are base64 text,
               ``application/json`` is a JSON value, everything else text).
``result``     ``{id, ok, error: {ename, evalue, traceback} | null, outputs: {name:
               {format, data, type, ...} | {error, type}}, execution_count}`` end of cell.
``pong``       ``{id}``.
``llm_request``, ``llm_cancel``: LLM calls, see below.

LLM calls
---------
Before ``ready`` the agent starts an HTTP server on ``127.0.0.1:<port>`` inside the sandbox
and sets, in its own ``os.environ`` (cells and their subprocesses inherit it; the container's
environment is untouched): ``OPENAI_BASE_URL=http://127.0.0.1:<port>/v1``,
``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>``, and ``OPENAI_API_KEY`` =
``ANTHROPIC_API_KEY`` = a random per-session token ``wflo-sandbox-<hex>`` (never a provider
key). It serves ``POST`` on ``LLM_ROUTES`` (with or without the ``/v1`` prefix; a query string
is ignored) and ``GET /v1/models`` / ``GET /v1/models/{id}`` of either API (``llm_routes``
owns the routes and their validation), checks the token (``Authorization: Bearer`` or
``x-api-key``; else 401) and that a POST body is a JSON object (else 400), all in the
provider's error shape, without the host.
Every accepted HTTP request becomes exactly one ``llm_request``; the token never leaves the
sandbox in a frame.

agent -> host
``llm_request``  ``{id, cell, provider: "openai" | "anthropic", endpoint: "chat" | "responses"
                 | "embeddings" | "messages" | "count_tokens" | "models", method: "POST" |
                 "GET", path: "/v1/...", headers: {name: value}, body}``
                 ``id`` is unique per request (not a cell id); ``cell`` is the id of the cell
                 running when the request was made (null between cells, e.g. a leftover
                 thread); ``headers`` holds only ``LLM_FORWARDED_HEADERS`` (lower-case names);
                 ``body`` is the request's JSON object (``stream: true`` asks for SSE; ``{}``
                 for a GET). ``method`` absent means ``POST`` (frames of older agents).
                 ``count_tokens`` (``POST /v1/messages/count_tokens``) and ``models``
                 (``GET``: ``path`` is ``/v1/models`` with Anthropic's validated list query,
                 or ``/v1/models/{id}``; ``provider`` is the one the SDK's headers named)
                 are free: the host neither budgets nor caches them and records them at $0.
                 The host checks the frame again with ``llm_routes.resolve``.
``llm_cancel``   ``{id, reason}`` the HTTP client went away (interrupted cell, a stream left
                 early) or the agent stopped waiting (timeout): the answer is no longer
                 wanted. Optional for the host to act on; later frames for ``id`` are dropped.

host -> agent: answer each ``llm_request`` with EITHER one
``llm_response``       ``{id, status, headers: {name: value}, body_b64}`` a whole answer
                       (JSON, an error in the provider's shape, or even a whole SSE body),
OR a stream of
``llm_response_start`` ``{id, status, headers}`` then any number of
``llm_response_chunk`` ``{id, data_b64}`` (bytes written to the client as they arrive) then
``llm_response_end``   ``{id, error: str | null}``; with an ``error`` the agent appends one
                       SSE error event in the provider's shape (so the SDK raises) and ends.
``headers`` are what the client should see (``content-type``, ``retry-after``,
``retry-after-ms``, ``x-request-id``, rate-limit headers, ...); bodies and chunks are the
DECODED bytes (no content-encoding); the agent drops ``LLM_HOP_HEADERS`` and frames the body
itself (``content-length``, or chunked transfer encoding for a stream).
Timeouts: when nothing arrives for a request for ``LLM_IDLE_TIMEOUT_S`` (per frame, so a long
stream is fine) the agent answers 504 (or ends a started stream with an error event) and sends
``llm_cancel``. If the channel dies, waiting requests are answered 502 before the agent exits.
Frames of different requests interleave freely: the host may answer many requests at once.

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
LLM_HOST_FRAME_TYPES = frozenset(
    {"llm_response", "llm_response_start", "llm_response_chunk", "llm_response_end"}
)
"""Host -> agent frames that answer an ``llm_request`` (routed to it by ``id``)."""
LLM_AGENT_FRAME_TYPES = frozenset({"llm_request", "llm_cancel"})

LLM_IDLE_TIMEOUT_S = 600.0
"""How long the agent waits for the next frame of an answer before giving up (504)."""
LLM_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/responses": ("openai", "responses"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/v1/messages": ("anthropic", "messages"),
    "/v1/messages/count_tokens": ("anthropic", "count_tokens"),
}
"""Canonical path -> (provider, endpoint) of every ``POST`` the loopback proxy forwards
(``llm_routes`` adds ``GET /v1/models[/{id}]``)."""
LLM_FORWARDED_HEADERS = (
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "content-type",
    "x-wflo-cache-ttl",
)
"""Request headers carried in ``llm_request``: those that change how the provider answers,
and ``x-wflo-cache-ttl`` (seconds to keep this answer in the cache; the gateway's own)."""
LLM_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)
"""Response headers the agent never passes on (it frames the body itself)."""

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


# -- LLM calls: shared by the host (answers) and the agent (requests, its own errors) ------

_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    411: ("invalid_request_error", "length_required"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    502: ("api_error", "api_error"),
    504: ("timeout", "timeout"),
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    411: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def llm_route(path: str) -> tuple[str, str, str] | None:
    """``(provider, endpoint, canonical path)`` for a proxied request path, or None.

    Accepts ``/v1/chat/completions`` and ``/chat/completions`` alike; ignores a query
    string and a trailing slash."""
    bare = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    canonical = bare if bare.startswith("/v1/") else "/v1" + bare
    route = LLM_ROUTES.get(canonical)
    return None if route is None else (route[0], route[1], canonical)


def llm_error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    """An error in ``provider``'s own JSON shape, so SDK code raises its usual exception."""
    if provider == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind, code = _OPENAI_ERROR_TYPES.get(status, ("api_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def llm_sse_error(provider: str, message: str) -> bytes:
    """One SSE event that makes the provider's SDK raise while it reads a stream."""
    if provider == "anthropic":
        data = json.dumps(llm_error_body("anthropic", 500, message))
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {json.dumps(llm_error_body('openai', 500, message))}\n\n".encode()


def llm_response(
    request_id: str, status: int, body: bytes, headers: dict[str, str] | None = None
) -> Frame:
    """A whole answer to ``llm_request`` ``request_id``."""
    return {
        "type": "llm_response",
        "id": request_id,
        "status": status,
        "headers": dict(headers or {"content-type": "application/json"}),
        "body_b64": b64encode(body),
    }


def llm_error_response(
    request_id: str,
    provider: str,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> Frame:
    """An error answer in the provider's shape (e.g. 402 budget refused, 502 upstream)."""
    body = json.dumps(llm_error_body(provider, status, message)).encode()
    return llm_response(
        request_id, status, body, {"content-type": "application/json", **(headers or {})}
    )


def llm_response_start(request_id: str, status: int, headers: dict[str, str]) -> Frame:
    """The head of a streamed answer (``content-type: text/event-stream`` for SSE)."""
    return {"type": "llm_response_start", "id": request_id, "status": status, "headers": headers}


def llm_response_chunk(request_id: str, data: bytes) -> Frame:
    return {"type": "llm_response_chunk", "id": request_id, "data_b64": b64encode(data)}


def llm_response_end(request_id: str, error: str | None = None) -> Frame:
    """End of a streamed answer; ``error`` ends it with an SSE error event instead."""
    return {"type": "llm_response_end", "id": request_id, "error": error}
