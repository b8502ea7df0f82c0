"""Server-sent events of the OpenAI and Anthropic APIs: parse them, assemble a stream
into the full response it stands for, and synthesise a stream from a full response
(so a cached or simulated answer is replayed as a stream when the request asked for one).

Endpoints: OpenAI ``chat`` (``/v1/chat/completions``, in ``streams_chat``), ``responses``
(``/v1/responses``, in ``streams_responses``), Anthropic ``messages`` (``/v1/messages``,
in ``streams_messages``). The SSE framing itself is in ``sse``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wflo_jupyter.gateway.sse import SseEvent, SseParser, parse_events
from wflo_jupyter.gateway.streams_chat import assemble_chat, synthesise_chat
from wflo_jupyter.gateway.streams_messages import assemble_messages, synthesise_messages
from wflo_jupyter.gateway.streams_responses import assemble_responses, synthesise_responses

__all__ = ["SseEvent", "SseParser", "assemble", "parse_events", "synthesise"]


def assemble(endpoint: str, events: Iterable[SseEvent]) -> dict[str, Any]:
    """The full (non-streamed) response body a stream of ``endpoint`` stands for."""
    if endpoint == "chat":
        return assemble_chat(events)
    if endpoint == "responses":
        return assemble_responses(events)
    if endpoint == "messages":
        return assemble_messages(events)
    raise ValueError(f"no stream assembly for endpoint {endpoint!r}")


def synthesise(
    endpoint: str, response: dict[str, Any], include_usage: bool = True
) -> list[SseEvent]:
    """A stream equivalent to ``response``, as the provider would have sent it."""
    if endpoint == "chat":
        return synthesise_chat(response, include_usage)
    if endpoint == "responses":
        return synthesise_responses(response)
    if endpoint == "messages":
        return synthesise_messages(response)
    raise ValueError(f"no stream synthesis for endpoint {endpoint!r}")
