"""Serve ``MockUpstream.send`` over HTTP on a free 127.0.0.1 port, so the official SDKs
can be pointed at the product's offline mock (``base_url``: OpenAI; ``url``: Anthropic).

This is not a stand-in: it is the product's own mock, reached the way a sandbox reaches
it, minus the gateway in between."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.providers import LocalServer
from wflo_jupyter.gateway.mock import MockUpstream


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        self.server.bodies.append(body)
        provider = "anthropic" if self.path.startswith("/v1/messages") else "openai"
        stream = bool(body.get("stream"))
        with self.server.mock.send(provider, self.path, raw, {}, stream=stream) as reply:
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if reply.chunks is not None:
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in reply.chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                return
            data = reply.body or b""
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mock: MockUpstream) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mock = mock
        self.bodies: list[dict[str, Any]] = []


class MockServer(LocalServer):
    """``MockUpstream`` behind HTTP; ``bodies`` are the requests it answered."""

    def __init__(self, mock: MockUpstream) -> None:
        self._mock_server = _Server(mock)
        super().__init__(self._mock_server)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return self._mock_server.bodies
