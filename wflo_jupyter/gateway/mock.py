"""``MockUpstream`` (``WFLO_PROVIDER=mock``): answers every call locally, for offline
demos only.

Answers are deterministic, in the provider's real format and in the shape the request
asks for (JSON for ``response_format`` / ``text.format``, a tool call under a tool
choice, ``n`` choices, reasoning tokens for a reasoning model; see ``shapes``), streams
synthesised from the full answer, their usage counted by the same tokenizer the ledger
estimates with, so they are priced as the named model. Every answer carries
``x-wflo-simulated: true``, ``sim`` in its ids, and the ledger labels the call
"simulated" wherever it shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from wflo_jupyter.gateway.mock_bodies import (
    Counted,
    chat_body,
    embeddings_body,
    messages_body,
    responses_body,
)
from wflo_jupyter.gateway.shapes import digest, plan_reply, reasoning_tokens
from wflo_jupyter.gateway.streams import synthesise
from wflo_jupyter.gateway.upstream import ENDPOINT_BY_PATH, UpstreamResponse

SIMULATED_HEADER = "x-wflo-simulated"

TokenCount = Callable[[str, str, Mapping[str, Any]], int]


def _last_user_text(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
    raw = body.get("input")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw)[:200] if raw is not None else ""


def simulated_text(
    model: str, body: Mapping[str, Any], max_words: int | None, choice: int = 0
) -> str:
    """The deterministic answer: the same request always gets the same words (choice
    ``n`` of an ``n>1`` request gets its own)."""
    prompt = " ".join(_last_user_text(body).split())
    fingerprint = digest(body)[:8]
    which = f" (choice {choice + 1})" if choice else ""
    words = f"Simulated answer {fingerprint}{which} from {model} to: {prompt}".split()
    if max_words is not None:
        words = words[: max(1, max_words)]
    return " ".join(words)


def _max_output(body: Mapping[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _choices(endpoint: str, body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return max(1, min(n, 128)) if endpoint == "chat" and isinstance(n, int) else 1


class MockUpstream:
    """Same ``send`` contract as ``Upstream``; never touches the network."""

    def __init__(self, count_tokens: TokenCount) -> None:
        self.count_tokens = count_tokens

    def close(self) -> None:
        pass

    def answer(
        self, provider: str, endpoint: str, body: Mapping[str, Any], text: str | None = None
    ) -> dict[str, Any]:
        """The full (non-streamed) response body for ``body``, in the shape it asks for
        (JSON, a tool call, ``n`` choices); its prose is ``text`` when given (a dry run's
        placeholder), else the simulated answer."""
        model = str(body.get("model") or "unknown-model")
        prompt_tokens = self.count_tokens(provider, model, body)
        if endpoint == "embeddings":
            return embeddings_body(model, prompt_tokens, body.get("input"))
        choices = [
            self._choice(provider, endpoint, model, body, index, text)
            for index in range(_choices(endpoint, body))
        ]
        if endpoint == "messages":
            return messages_body(model, prompt_tokens, choices[0])
        if endpoint == "responses":
            return responses_body(model, prompt_tokens, choices[0], body)
        return chat_body(model, prompt_tokens, choices)

    def _choice(
        self,
        provider: str,
        endpoint: str,
        model: str,
        body: Mapping[str, Any],
        index: int,
        text: str | None,
    ) -> Counted:
        cap = _max_output(body)
        seed = digest({"request": body, "choice": index}) if index else digest(body)
        prose = text if text is not None else simulated_text(model, body, cap, index)
        prefix = "toolu_sim_" if endpoint == "messages" else "call_sim_"
        reply = plan_reply(endpoint, body, seed, prose, prefix)
        written = reply.text or "".join(c.name + c.arguments_json for c in reply.calls)
        output = self.count_tokens(
            provider, model, {"messages": [{"role": "assistant", "content": written}]}
        )
        thinking = reasoning_tokens(model, body, seed) if endpoint != "messages" else 0
        if cap is not None:
            output = min(output, cap)
            thinking = max(0, min(thinking, cap - output))
        return Counted(reply, output, thinking)

    @contextmanager
    def send(
        self,
        provider: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool = False,
        method: str = "POST",  # always POST: the gateway answers free GETs (gateway.free)
    ) -> Iterator[UpstreamResponse]:
        _, endpoint = ENDPOINT_BY_PATH.get(path, (provider, "chat"))
        request = json.loads(body or b"{}")
        full = self.answer(provider, endpoint, request)
        reply_headers = {"content-type": "application/json", SIMULATED_HEADER: "true"}
        if stream and endpoint != "embeddings":
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            events = synthesise(endpoint, full, include_usage=include_usage)
            yield UpstreamResponse(
                status=200,
                headers={**reply_headers, "content-type": "text/event-stream"},
                chunks=iter([event.encode() for event in events]),
            )
            return
        yield UpstreamResponse(status=200, headers=reply_headers, body=json.dumps(full).encode())
