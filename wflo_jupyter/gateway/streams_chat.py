"""OpenAI Chat Completions streams (``chat.completion.chunk``): assemble one into the full
``chat.completion`` it stands for, and synthesise one from a full completion.

A synthesised stream sends, per choice index: a role chunk with the content's first
piece, the rest in a few more, each tool call as a first delta with ``id`` / ``name``
and then its ``arguments`` in pieces, and a chunk with the ``finish_reason``; then the
usage chunk (``choices: []``) when the request asked for
``stream_options.include_usage``, and ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wflo_jupyter.gateway.sse import SseEvent, json_events, pieces

_TOP_KEYS = ("id", "created", "model", "system_fingerprint", "service_tier")


def assemble_chat(events: Iterable[SseEvent]) -> dict[str, Any]:
    response: dict[str, Any] = {"object": "chat.completion", "choices": []}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in json_events(events):
        for key in _TOP_KEYS:
            if key in chunk:
                response[key] = chunk[key]
        if chunk.get("usage"):
            response["usage"] = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            slot = choices.setdefault(
                index,
                {
                    "index": index,
                    "message": {"role": "assistant", "content": None},
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
            _apply_delta(slot["message"], choice.get("delta") or {})
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
    for slot in choices.values():
        message = slot["message"]
        if message["content"] is None and not message.get("tool_calls"):
            message["content"] = ""
    response["choices"] = [choices[i] for i in sorted(choices)]
    return response


def _apply_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    if delta.get("role"):
        message["role"] = delta["role"]
    if delta.get("content") is not None:
        message["content"] = (message["content"] or "") + delta["content"]
    if "refusal" in delta:
        refusal = delta["refusal"]
        message["refusal"] = (
            message.get("refusal") if refusal is None else (message.get("refusal") or "") + refusal
        )
    calls = message.setdefault("tool_calls", []) if delta.get("tool_calls") else None
    for call in delta.get("tool_calls") or []:
        assert calls is not None
        position = int(call.get("index", len(calls)))
        while len(calls) <= position:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        target = calls[position]
        target["id"] = call.get("id") or target["id"]
        function = call.get("function") or {}
        target["function"]["name"] += function.get("name") or ""
        target["function"]["arguments"] += function.get("arguments") or ""


def synthesise_chat(response: dict[str, Any], include_usage: bool) -> list[SseEvent]:
    base: dict[str, Any] = {k: response[k] for k in _TOP_KEYS if k in response}
    base["object"] = "chat.completion.chunk"
    out: list[SseEvent] = []

    def emit(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(SseEvent(json.dumps({**base, "choices": [choice]})))

    for choice in response.get("choices") or []:
        index, message = int(choice.get("index", 0)), choice.get("message") or {}
        content, calls = message.get("content"), message.get("tool_calls") or []
        texts = pieces(content) if content else [""]
        first: dict[str, Any] = {
            "role": message.get("role", "assistant"),
            "content": texts[0] if content is not None or not calls else None,
            "refusal": None,
        }
        emit(index, first)
        for piece in texts[1:]:
            emit(index, {"content": piece})
        for position, call in enumerate(calls):
            function = call.get("function") or {}
            opening = {
                "index": position,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": function.get("name", ""), "arguments": ""},
            }
            emit(index, {"tool_calls": [opening]})
            for piece in pieces(function.get("arguments") or ""):
                if piece:
                    emit(
                        index,
                        {"tool_calls": [{"index": position, "function": {"arguments": piece}}]},
                    )
        emit(index, {}, choice.get("finish_reason") or ("tool_calls" if calls else "stop"))
    if include_usage and response.get("usage"):
        out.append(SseEvent(json.dumps({**base, "choices": [], "usage": response["usage"]})))
    out.append(SseEvent("[DONE]"))
    return out
