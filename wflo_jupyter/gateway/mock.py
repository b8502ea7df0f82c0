"""``MockUpstream`` (``WFLO_PROVIDER=mock``): answers every call locally, for offline
demos only.

Answers are deterministic, in the provider's real format (streams synthesised from the
full answer), their usage counted by the same tokenizer the ledger estimates with, so
they are priced as the named model. Every answer carries ``x-wflo-simulated: true`` and
the ledger labels the call "simulated" wherever it shows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

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


def simulated_text(model: str, body: Mapping[str, Any], max_words: int | None) -> str:
    """The deterministic answer: the same request always gets the same words."""
    prompt = " ".join(_last_user_text(body).split())
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    words = f"Simulated answer {digest} from {model} to: {prompt}".split()
    if max_words is not None:
        words = words[: max(1, max_words)]
    return " ".join(words)


def _max_output(body: Mapping[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


class MockUpstream:
    """Same ``send`` contract as ``Upstream``; never touches the network."""

    def __init__(self, count_tokens: TokenCount) -> None:
        self.count_tokens = count_tokens

    def close(self) -> None:
        pass

    def answer(
        self, provider: str, endpoint: str, body: Mapping[str, Any], text: str | None = None
    ) -> dict[str, Any]:
        """The full (non-streamed) response body for ``body``; its words are ``text`` when
        given (a dry run's placeholder), else the simulated answer."""
        model = str(body.get("model") or "unknown-model")
        prompt_tokens = self.count_tokens(provider, model, body)
        if endpoint == "embeddings":
            raw = body.get("input")
            items = raw if isinstance(raw, list) else [raw]
            vectors = []
            for index, item in enumerate(items):
                seed = hashlib.sha256(json.dumps(item).encode()).digest()
                vectors.append(
                    {
                        "object": "embedding",
                        "index": index,
                        "embedding": [round(b / 255 - 0.5, 4) for b in seed[:16]],
                    }
                )
            return {
                "object": "list",
                "model": model,
                "data": vectors,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
        cap = _max_output(body)
        if text is None:
            text = simulated_text(model, body, cap)
        output_tokens = self.count_tokens(
            provider, model, {"messages": [{"role": "assistant", "content": text}]}
        )
        if cap is not None:
            output_tokens = min(output_tokens, cap)
        ident = hashlib.sha256(text.encode()).hexdigest()[:16]
        created = int(time.time())
        if endpoint == "messages":
            return {
                "id": f"msg_sim_{ident}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": prompt_tokens,
                    "output_tokens": output_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
        if endpoint == "responses":
            return {
                "id": f"resp_sim_{ident}",
                "object": "response",
                "created_at": created,
                "status": "completed",
                "model": model,
                "error": None,
                "incomplete_details": None,
                "instructions": None,
                "metadata": {},
                "parallel_tool_calls": True,
                "temperature": 1.0,
                "top_p": 1.0,
                "tool_choice": "auto",
                "tools": [],
                "text": {"format": {"type": "text"}},
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_sim_{ident}",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "usage": {
                    "input_tokens": prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": prompt_tokens + output_tokens,
                },
            }
        return {
            "id": f"chatcmpl-sim-{ident}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "wflo-simulated",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }

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
