"""The LLM proxy: a loopback HTTP server that turns each call of an SDK in a cell into
one ``llm_request`` frame to the host.

The official ``openai`` and ``anthropic`` SDKs reach it through ``OPENAI_BASE_URL`` /
``ANTHROPIC_BASE_URL`` set in the agent's own environment, with a per-session token as
their API keys; the host's answer frames are written back to the SDK (``llm_answer``),
streams chunk by chunk (``protocol`` documents the frames). Provider keys never enter
the sandbox.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import formats, http_exchange, llm_answer, llm_routes, protocol, runtime
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    formats, http_exchange, llm_answer = load("formats"), load("http_exchange"), load("llm_answer")
    llm_routes, protocol, runtime = load("llm_routes"), load("protocol"), load("runtime")

if TYPE_CHECKING:
    from .channel import Sender
    from .llm_router import LlmRouter

LLM_TOKEN_PREFIX = "wflo-sandbox-"
LLM_MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body the proxy accepts (413 above it)."""
LLM_DIRECT_MAX_B64 = 256 * 1024
"""Complete answers up to this size (base64) are written by the channel's reading thread."""


def _provider_guess(path: str) -> str:
    """Whose error shape to answer in when the path matches no route."""
    return "anthropic" if "/messages" in path else "openai"


class LlmProxy:
    """The loopback HTTP proxy the SDKs in cells talk to.

    The listening socket is bound in ``__init__`` (so the port is known before ``ready``);
    the serving thread accepts connections and gives each its own daemon thread (SIGINT
    blocked, inherited). The HTTP/1.1 server is our own, small and strict
    (``http_exchange``): requests of a connection are served in order (keep-alive,
    pipelining; ``Connection: close`` and HTTP/1.0 close after the answer), a head over
    ``LLM_MAX_HEAD_BYTES`` is a 431 and a malformed one a 400, both in the provider's
    error shape. An answer leaves in one write;
    a streamed answer goes out with chunked transfer encoding, each ``llm_response_chunk``
    written as it arrives.
    """

    def __init__(
        self,
        sender: Sender,
        router: LlmRouter,
        current_cell: Callable[[], str | None],
        timeout_s: float = protocol.LLM_IDLE_TIMEOUT_S,
    ) -> None:
        self.sender = sender
        self.router = router
        self.current_cell = current_cell
        self.timeout_s = timeout_s
        self.token = LLM_TOKEN_PREFIX + os.urandom(16).hex()
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.bind(("127.0.0.1", 0))
            raw.listen(128)
            fd = runtime.high_fd(raw.detach())
        except BaseException:
            raw.close()
            raise
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=fd)
        self.port: int = self.listener.getsockname()[1]

    def environment(self) -> dict[str, str]:
        """What the SDKs need: base URLs of this proxy and the session token as keys."""
        base = f"http://127.0.0.1:{self.port}"
        return {
            "OPENAI_BASE_URL": f"{base}/v1",
            "ANTHROPIC_BASE_URL": base,
            "OPENAI_API_KEY": self.token,
            "ANTHROPIC_API_KEY": self.token,
        }

    def start(self) -> None:
        runtime.agent_thread("wflo-agent-llm-proxy", self._serve)

    def _serve(self) -> None:
        """Accept connections for good, one daemon thread each."""
        runtime.block_sigint()  # inherited by every connection thread
        import hmac  # noqa: F401 - loaded now, used by every request's token check

        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL):
                    runtime.diag(
                        f"wflo-agent: the LLM proxy's socket is gone ({exc}); no more calls"
                    )
                    return
                time.sleep(0.05)  # EMFILE and the like: the backlog waits meanwhile
                continue
            try:
                threading.Thread(
                    target=self._connection,
                    args=(connection,),
                    name="wflo-agent-llm-connection",
                    daemon=True,
                ).start()
            except RuntimeError as exc:  # no more threads: this client is turned away
                runtime.diag(f"wflo-agent: LLM proxy connection dropped ({exc})")
                connection.close()

    def _connection(self, connection: socket.socket) -> None:
        """One client connection (its own thread): requests answered in order until the
        client closes or an answer closes the connection."""
        try:
            with connection, connection.makefile("rb") as rfile:
                # a client's delayed ACK must never hold back a write (~40 ms on Linux)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    client = http_exchange.Exchange(connection, rfile)
                    try:
                        if not client.read_head():
                            return  # the client closed the connection
                    except http_exchange.BadRequest as bad:
                        llm_answer.refuse(
                            client, _provider_guess(client.path), bad.status, bad.message
                        )
                    else:
                        self.handle(client)
                    client.flush()
                    if client.close_connection:
                        http_exchange.linger(connection)
                        return
        except OSError:
            pass  # the client went away
        except Exception:
            runtime.diag(f"wflo-agent: LLM proxy request failed\n{traceback.format_exc()}")

    # one HTTP request ----------------------------------------------------------------

    def handle(self, client: http_exchange.Exchange) -> None:
        """A request from an SDK -> ``llm_request`` -> the host's answer, written back."""
        provider = llm_routes.provider_from_headers(client.headers.get)
        try:
            route = llm_routes.resolve(client.command, client.path, provider)
        except llm_routes.RouteRefused as refused:
            shape = provider if "/models" in client.path else _provider_guess(client.path)
            llm_answer.refuse(client, shape, refused.status, refused.message)
            return
        provider = route.provider
        if not self._authorised(client):
            llm_answer.refuse(
                client,
                provider,
                401,
                "invalid API key: inside a wflo sandbox, LLM calls use the session token "
                "already set in OPENAI_API_KEY / ANTHROPIC_API_KEY",
            )
            return
        body = self._read_json(client, provider) if route.method == "POST" else {}
        if body is None:
            return
        if route.method == "GET" and (
            str(client.headers.get("content-length") or "0") != "0"
            or client.headers.get("transfer-encoding") is not None
        ):
            llm_answer.refuse(client, provider, 400, "a GET request carries no body")
            return
        request_id = os.urandom(12).hex()
        claim = threading.Lock()  # who writes the answer: the reading thread or this one

        def direct(frame: dict[str, Any]) -> bool:
            """On the reading thread: write a small complete answer at once."""
            if len(str(frame.get("body_b64") or "")) > LLM_DIRECT_MAX_B64:
                return False
            if not claim.acquire(blocking=False):
                return False  # this thread already answered (a timeout, the client left)
            llm_answer.write_full(client, provider, frame)
            return True

        inbox = self.router.open(request_id, direct)
        if inbox is None:
            llm_answer.refuse(client, provider, 502, "the sandbox has lost its channel to the host")
            return
        try:
            headers = {}
            for name in protocol.LLM_FORWARDED_HEADERS:
                value = client.headers.get(name)
                if value is not None:
                    headers[name] = str(value)
            try:
                self.sender.send_now(
                    {
                        "type": "llm_request",
                        "id": request_id,
                        "cell": self.current_cell(),
                        "provider": provider,
                        "endpoint": route.endpoint,
                        "method": route.method,
                        "path": route.path,
                        "headers": headers,
                        "body": body,
                    }
                )
            except protocol.ProtocolError as exc:
                llm_answer.refuse(
                    client, provider, 413, f"the request cannot be sent to the host: {exc}"
                )
                return
            call = llm_answer.Call(
                client, provider, request_id, inbox, self.router, self.sender, self.timeout_s
            )
            call.answer(claim)
        finally:
            self.router.forget(request_id)

    def _authorised(self, client: http_exchange.Exchange) -> bool:
        import hmac  # already loaded by the serving thread; a dict lookup here

        presented: list[str] = []
        authorization = str(client.headers.get("authorization") or "")
        if authorization[:7].lower() == "bearer ":
            presented.append(authorization[7:].strip())
        api_key = client.headers.get("x-api-key")
        if api_key is not None:
            presented.append(str(api_key).strip())
        expected = self.token.encode()
        return any(hmac.compare_digest(p.encode("utf-8", "replace"), expected) for p in presented)

    def _read_json(self, client: http_exchange.Exchange, provider: str) -> dict[str, Any] | None:
        """The request's JSON object, or None after refusing the request."""
        if "chunked" in str(client.headers.get("transfer-encoding") or "").lower():
            llm_answer.refuse(client, provider, 411, "send the request body with a Content-Length")
            return None
        declared = str(client.headers.get("content-length") or "0")
        length = int(declared) if declared.isascii() and declared.isdigit() else -1
        if length < 0:
            llm_answer.refuse(client, provider, 400, "invalid Content-Length")
            return None
        if length > LLM_MAX_BODY_BYTES:
            llm_answer.refuse(
                client,
                provider,
                413,
                f"request body of {formats.format_bytes(length)} is over the sandbox proxy's limit "
                f"of {formats.format_bytes(LLM_MAX_BODY_BYTES)}",
            )
            return None
        try:
            raw = client.read_body(length) if length else b""
        except OSError:
            client.close_connection = True
            return None
        if len(raw) < length:
            client.close_connection = True
            return None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            llm_answer.refuse(
                client, provider, 400, f"the request body is not JSON: {formats.one_line(exc)}"
            )
            return None
        if not isinstance(body, dict):
            llm_answer.refuse(
                client,
                provider,
                400,
                f"the request body is a JSON {type(body).__name__}, not an object",
            )
            return None
        return body
