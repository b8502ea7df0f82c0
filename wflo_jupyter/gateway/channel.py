"""The gateway's end of the agent channel: an ``llm_request`` frame from the sandbox
becomes a ``GatewayRequest`` (validated: the frame is untrusted, cell code runs in the
agent's process), and the answer goes back as ``llm_response*`` frames."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from wflo_jupyter.gateway.service import CallContext, GatewayRequest, Responder
from wflo_jupyter.sandbox.agent.llm_routes import RouteRefused, resolve
from wflo_jupyter.sandbox.agent.protocol import (
    LLM_FORWARDED_HEADERS,
    Frame,
    llm_error_response,
    llm_response,
    llm_response_chunk,
    llm_response_end,
    llm_response_start,
)

Send = Callable[[Frame], None]
FrameHandler = Callable[[Frame, Send], None]
FastFrameHandler = Callable[[Frame, Send], bool]

log = logging.getLogger(__name__)


class Answers(Protocol):
    """What answers a step's calls: ``LlmGateway``, or a dry run's ``EstimateGateway``."""

    def handle(self, request: GatewayRequest, ctx: CallContext, responder: Responder) -> None: ...
    def answer_from_cache(
        self, request: GatewayRequest, ctx: CallContext, responder: Responder
    ) -> bool: ...


class BadLlmRequest(ValueError):
    """An ``llm_request`` frame that does not describe a call the gateway serves."""


def request_from_frame(frame: Mapping[str, Any]) -> GatewayRequest:
    """Validate an ``llm_request`` frame; ``BadLlmRequest`` with a one-line reason."""
    path, method, provider = frame.get("path"), frame.get("method", "POST"), frame.get("provider")
    if not isinstance(path, str) or method not in ("GET", "POST"):
        raise BadLlmRequest(f"no such endpoint: {method!r} {path!r}")
    try:
        route = resolve(method, path, provider if isinstance(provider, str) else "openai")
    except RouteRefused as refused:
        raise BadLlmRequest(f"no such endpoint: {method} {path[:200]!r}: {refused}") from None
    body = frame.get("body")
    if not isinstance(body, dict):
        raise BadLlmRequest("the request body must be a JSON object")
    raw_headers = frame.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise BadLlmRequest("headers must be an object")
    headers = {
        str(k).lower(): str(v)
        for k, v in raw_headers.items()
        if str(k).lower() in LLM_FORWARDED_HEADERS
    }
    return GatewayRequest(
        route.provider, route.endpoint, route.path, body, headers, method=route.method
    )


class ChannelResponder:
    """``Responder`` that answers one request over the agent channel."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self.request_id = request_id
        self.answered = False

    def full(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.answered = True
        self._send(llm_response(self.request_id, status, body, headers))

    def start(self, status: int, headers: dict[str, str]) -> None:
        self.answered = True
        self._send(llm_response_start(self.request_id, status, headers))

    def chunk(self, data: bytes) -> None:
        self._send(llm_response_chunk(self.request_id, data))

    def end(self, error: str | None = None) -> None:
        self._send(llm_response_end(self.request_id, error))

    def refuse(self, provider: str, status: int, message: str) -> None:
        self.answered = True
        self._send(llm_error_response(self.request_id, provider, status, message))


def frame_handlers(gateway: Answers, ctx: CallContext) -> tuple[FrameHandler, FastFrameHandler]:
    """What a sandbox calls for the ``llm_request`` frames of one step: ``handle`` (on a
    worker thread: every request gets exactly one answer) and ``fast`` (on the channel's
    reading thread first: answers a cache hit at once, else returns False untouched)."""

    def handle(frame: Frame, send: Send) -> None:
        responder = ChannelResponder(send, str(frame.get("id", "")))
        try:
            request = request_from_frame(frame)
        except BadLlmRequest as exc:
            responder.refuse("openai", 400, str(exc))
            return
        try:
            gateway.handle(request, ctx, responder)
        except Exception as exc:  # never leave the SDK waiting
            log.exception("LLM gateway failed")
            if not responder.answered:
                responder.refuse(request.provider, 500, f"wflo gateway error: {type(exc).__name__}")

    def fast(frame: Frame, send: Send) -> bool:
        try:
            request = request_from_frame(frame)
        except BadLlmRequest:
            return False  # the worker answers it with the error
        responder = ChannelResponder(send, str(frame.get("id", "")))
        return gateway.answer_from_cache(request, ctx, responder)

    return handle, fast
