"""A local HTTP server that answers like the OpenAI and Anthropic APIs.

It is the only stand-in in the suite: the provider's HTTP endpoint. It speaks the
real wire formats (usage fields incl. cached/reasoning token details, error shapes,
SSE streams) so the official SDKs can drive it, counts requests, and can be told to
fail (e.g. 429 with ``Retry-After``) or to answer slowly.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes import free_endpoints


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
    replays: list[bytes] = field(default_factory=list)
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _words(value: Any) -> int:
    """A deterministic token count for the fake: one token per 4 characters, at least 1."""
    return max(1, len(json.dumps(value)) // 4)


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raw = body.get("input")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw)[:200] if raw is not None else ""


def answer_text(body: dict[str, Any]) -> str:
    """The deterministic answer to a request: 'echo: <last user text>'."""
    return f"echo: {_last_user_text(body)}"


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
        if state.delay_s:
            time.sleep(state.delay_s)
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
    def _openai_usage(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        state = self.server.state
        prompt = _words(body.get("messages") or body.get("input"))
        completion = _output_tokens(body, text) + state.reasoning_tokens
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
        text = answer_text(body)
        usage = self._openai_usage(body, text)
        ident, created, model = (
            f"chatcmpl-{uuid.uuid4().hex[:12]}",
            int(time.time()),
            body.get("model", ""),
        )
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        self._start_sse()
        base = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        self._sse(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
        for piece in [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]:
            self._sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": piece},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        self._sse(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            }
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            self._sse({**base, "choices": [], "usage": usage})
        self._sse("[DONE]")

    def _responses(self, body: dict[str, Any]) -> None:
        text = answer_text(body)
        chat_usage = self._openai_usage(body, text)
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
        message = {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response = {
            "id": f"resp_{uuid.uuid4().hex[:12]}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model", ""),
            "output": [message],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "text": {"format": {"type": "text"}},
        }
        if not body.get("stream"):
            self._send_json(200, response)
            return
        self._start_sse()
        seq = 0

        def emit(kind: str, payload: dict[str, Any]) -> None:
            nonlocal seq
            self._sse({"type": kind, "sequence_number": seq, **payload}, event=kind)
            seq += 1

        emit(
            "response.created",
            {"response": {**response, "status": "in_progress", "output": [], "usage": None}},
        )
        emit(
            "response.output_item.added",
            {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}},
        )
        emit(
            "response.content_part.added",
            {
                "item_id": message["id"],
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        )
        emit(
            "response.output_text.delta",
            {
                "item_id": message["id"],
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
        )
        emit(
            "response.output_text.done",
            {
                "item_id": message["id"],
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
        )
        emit("response.completed", {"response": response})

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
        text = answer_text(body)
        usage = {
            "input_tokens": _words(body.get("messages")),
            "output_tokens": _output_tokens(body, text),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": state.cached_tokens,
        }
        ident, model = f"msg_{uuid.uuid4().hex[:12]}", body.get("model", "")
        message = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._send_json(200, message)
            return
        self._start_sse()
        start_usage = {**usage, "output_tokens": 1}
        self._sse(
            {
                "type": "message_start",
                "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
            },
            event="message_start",
        )
        self._sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            event="content_block_start",
        )
        for piece in [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]:
            self._sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
                event="content_block_delta",
            )
        self._sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
        self._sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            event="message_delta",
        )
        self._sse({"type": "message_stop"}, event="message_stop")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeProviderState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FakeProvider:
    """Run the fake on a free 127.0.0.1 port; ``base_url`` is its ``/v1`` root."""

    def __init__(self) -> None:
        self.state = FakeProviderState()
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def fail_next(self, status: int, retry_after: float | None = None, times: int = 1) -> None:
        with self.state.lock:
            self.state.failures.extend(Failure(status, retry_after) for _ in range(times))

    def replay_next(self, raw_sse: bytes) -> None:
        """Answer the next request with these exact SSE bytes."""
        with self.state.lock:
            self.state.replays.append(raw_sse)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
