"""A local HTTP server that answers like the OpenAI and Anthropic APIs.

It is the only stand-in in the suite: the provider's HTTP endpoint. It speaks the
real wire formats (usage fields incl. cached/reasoning token details, error shapes,
SSE streams) and honours the request's shape (JSON formats, tools and tool choice, ``n``;
see ``answers``) so the official SDKs can drive it, counts requests, and can be told to
fail (e.g. 429 with ``Retry-After``) or to answer slowly.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes import answers, free_endpoints, prompt_cache
from tests.fakes.answers import answer_text

__all__ = ["FakeProvider", "answer_text"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Failure:
    status: int
    retry_after: float | None = None
    message: str = "simulated failure"


@dataclass
class FakeProviderState:
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    delay_s: float = 0.0
    disconnects: int = 0  # clients that hung up while their answer was delayed
    replays: list[bytes] = field(default_factory=list)
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_prefixes: set[str] = field(default_factory=set)  # Anthropic prompt caching
    lock: threading.Lock = field(default_factory=threading.Lock)


def _words(value: Any) -> int:
    """A deterministic token count for the fake: one token per 4 characters, at least 1."""
    return max(1, len(json.dumps(value)) // 4)


def _output_tokens(body: dict[str, Any], text: str) -> int:
    limit = (
        body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    )
    tokens = max(1, len(text.split()))
    return min(tokens, int(limit)) if limit else tokens


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    do_GET = free_endpoints.serve_get  # tests/fakes/free_endpoints.py

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------
    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _sse(self, data: dict[str, Any] | str, event: str | None = None) -> None:
        chunk = ""
        if event:
            chunk += f"event: {event}\n"
        chunk += f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
        self.wfile.write(chunk.encode())
        self.wfile.flush()

    def _client_left(self, wait_s: float) -> bool:
        """Wait ``wait_s`` (a slow provider), watching the connection: True as soon as the
        client closes it (it cancelled the request), like a real server noticing."""
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], left)
            if not readable:
                continue
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                return True
            if not peeked:
                return True
            time.sleep(min(0.05, left))  # a next request already sent: not a hang-up
        return False

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        state = self.server.state
        with state.lock:
            state.requests.append(
                RecordedRequest(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
            )
            failure = state.failures.pop(0) if state.failures else None
            replay = state.replays.pop(0) if state.replays and failure is None else None
        if state.delay_s and self._client_left(state.delay_s):
            with state.lock:
                state.disconnects += 1
            self.close_connection = True
            return
        anthropic = self.path.startswith("/v1/messages")
        if replay is not None:
            self._start_sse()
            self.wfile.write(replay)
            return
        if failure is not None:
            headers = (
                {"Retry-After": f"{failure.retry_after:g}"}
                if failure.retry_after is not None
                else {}
            )
            if anthropic:
                kind = "rate_limit_error" if failure.status == 429 else "invalid_request_error"
                self._send_json(
                    failure.status,
                    {"type": "error", "error": {"type": kind, "message": failure.message}},
                    headers,
                )
            else:
                kind = "rate_limit_exceeded" if failure.status == 429 else "invalid_request_error"
                self._send_json(
                    failure.status,
                    {
                        "error": {
                            "message": failure.message,
                            "type": kind,
                            "param": None,
                            "code": kind,
                        }
                    },
                    headers,
                )
            return
        if free_endpoints.serve_post(self, body):  # /v1/messages/count_tokens
            return
        if self.path.startswith("/v1/chat/completions"):
            self._chat(body)
        elif self.path.startswith("/v1/responses"):
            self._responses(body)
        elif self.path.startswith("/v1/embeddings"):
            self._embeddings(body)
        elif anthropic:
            self._messages(body)
        else:
            self._send_json(
                404,
                {
                    "error": {
                        "message": f"no route {self.path}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )

    # -- OpenAI -------------------------------------------------------------------------
    def _events(self, events: list[answers.Event]) -> None:
        self._start_sse()
        for data, event in events:
            self._sse(data, event=event)

    def _openai_usage(self, body: dict[str, Any], visible: int) -> dict[str, Any]:
        state = self.server.state
        prompt = _words(body.get("messages") or body.get("input"))
        completion = visible + state.reasoning_tokens
        return {
            "prompt_tokens": prompt + state.cached_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt + state.cached_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": state.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": state.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _chat(self, body: dict[str, Any]) -> None:
        choices = answers.chat_choices(body)
        usage = self._openai_usage(body, answers.visible_tokens(body, choices))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "system_fingerprint": "fp_fake",
        }
        if not body.get("stream"):
            full = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
            self._send_json(200, full)
            return
        chunk_base = {**base, "object": "chat.completion.chunk"}
        events = answers.chat_stream(chunk_base, choices)
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(({**chunk_base, "choices": [], "usage": usage}, None))
        self._events([*events, ("[DONE]", None)])

    def _responses(self, body: dict[str, Any]) -> None:
        output = answers.responses_output(body)
        written = "".join(
            item.get("arguments") or item.get("content", [{}])[0].get("text", "") for item in output
        )
        chat_usage = self._openai_usage(body, _output_tokens(body, written))
        usage = {
            "input_tokens": chat_usage["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": chat_usage["prompt_tokens_details"]["cached_tokens"]
            },
            "output_tokens": chat_usage["completion_tokens"],
            "output_tokens_details": {
                "reasoning_tokens": chat_usage["completion_tokens_details"]["reasoning_tokens"]
            },
            "total_tokens": chat_usage["total_tokens"],
        }
        response = {
            "id": f"resp_{uuid.uuid4().hex[:12]}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model", ""),
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "usage": usage,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "text": body.get("text") or {"format": {"type": "text"}},
        }
        if not body.get("stream"):
            self._send_json(200, response)
            return
        self._events(answers.responses_stream(response))

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        tokens = sum(_words(i) for i in items)
        self._send_json(
            200,
            {
                "object": "list",
                "model": body.get("model", ""),
                "data": [
                    {
                        "object": "embedding",
                        "index": n,
                        "embedding": [round(0.001 * (n + k), 6) for k in range(8)],
                    }
                    for n, _ in enumerate(items)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    # -- Anthropic ----------------------------------------------------------------------
    def _messages(self, body: dict[str, Any]) -> None:
        state = self.server.state
        content = answers.message_content(body)
        written = "".join(str(b.get("text") or json.dumps(b.get("input"))) for b in content)
        with state.lock:
            usage = prompt_cache.cache_usage(body, state.prompt_prefixes)
        usage["output_tokens"] = _output_tokens(body, written)
        usage["cache_read_input_tokens"] += state.cached_tokens
        message = {
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._send_json(200, message)
            return
        self._events(answers.message_stream(message, usage))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeProviderState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class LocalServer:
    """An HTTP server on a free 127.0.0.1 port, served from a daemon thread; ``base_url``
    is its ``/v1`` root (OpenAI SDKs), ``url`` the bare root (Anthropic SDKs)."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port!s}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FakeProvider(LocalServer):
    """Run the fake on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.state = FakeProviderState()
        super().__init__(_Server(self.state))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def fail_next(self, status: int, retry_after: float | None = None, times: int = 1) -> None:
        with self.state.lock:
            self.state.failures.extend(Failure(status, retry_after) for _ in range(times))

    @property
    def disconnects(self) -> int:
        """Requests whose client hung up while the answer was delayed (``delay_s``)."""
        with self.state.lock:
            return self.state.disconnects

    def replay_next(self, raw_sse: bytes) -> None:
        """Answer the next request with these exact SSE bytes."""
        with self.state.lock:
            self.state.replays.append(raw_sse)
