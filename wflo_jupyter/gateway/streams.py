"""Server-sent events of the OpenAI and Anthropic APIs: parse them, assemble a stream
into the full response it stands for, and synthesise a stream from a full response
(so a cached answer is replayed as a stream when the request asked for one).

Endpoints: OpenAI ``chat`` (``/v1/chat/completions``), ``responses`` (``/v1/responses``),
Anthropic ``messages`` (``/v1/messages``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: optional ``event:`` name and its ``data:`` text."""

    data: str
    event: str | None = None

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {self.data}\n\n".encode()


class SseParser:
    """Incremental SSE parser: feed bytes as they arrive, get complete events."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events: list[SseEvent] = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            event_name: str | None = None
            data_lines: list[str] = []
            for line in block.decode("utf-8", "replace").split("\n"):
                if line.startswith(":") or not line:
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event_name = value
                elif field == "data":
                    data_lines.append(value)
            if data_lines or event_name:
                events.append(SseEvent("\n".join(data_lines), event_name))
        return events


def parse_events(raw: bytes) -> list[SseEvent]:
    """All events of a complete SSE body."""
    parser = SseParser()
    return parser.feed(raw if raw.endswith(b"\n\n") else raw + b"\n\n")


def _json_events(events: Iterable[SseEvent]) -> Iterator[dict[str, Any]]:
    for event in events:
        if event.data and event.data != "[DONE]":
            try:
                value = json.loads(event.data)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value


# -- assemble: stream -> full response ----------------------------------------------------
def assemble(endpoint: str, events: Iterable[SseEvent]) -> dict[str, Any]:
    """The full (non-streamed) response body a stream of ``endpoint`` stands for."""
    if endpoint == "chat":
        return _assemble_chat(events)
    if endpoint == "responses":
        return _assemble_responses(events)
    if endpoint == "messages":
        return _assemble_messages(events)
    raise ValueError(f"no stream assembly for endpoint {endpoint!r}")


def _assemble_chat(events: Iterable[SseEvent]) -> dict[str, Any]:
    response: dict[str, Any] = {"object": "chat.completion", "choices": []}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in _json_events(events):
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
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
                    "message": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                slot["message"]["role"] = delta["role"]
            if delta.get("content"):
                slot["message"]["content"] += delta["content"]
            if delta.get("tool_calls"):
                calls = slot["message"].setdefault("tool_calls", [])
                for call in delta["tool_calls"]:
                    position = int(call.get("index", len(calls)))
                    while len(calls) <= position:
                        calls.append(
                            {
                                "id": "",
                                "type": "function",
                                "function": {"name": "", "arguments": ""},
                            }
                        )
                    target = calls[position]
                    target["id"] = call.get("id") or target["id"]
                    function = call.get("function") or {}
                    target["function"]["name"] += function.get("name") or ""
                    target["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
    response["choices"] = [choices[i] for i in sorted(choices)]
    return response


def _assemble_responses(events: Iterable[SseEvent]) -> dict[str, Any]:
    final: dict[str, Any] | None = None
    for event in _json_events(events):
        if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
            final = event.get("response")
    if final is None:
        raise ValueError("the responses stream ended without a final response event")
    return final


def _assemble_messages(events: Iterable[SseEvent]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, str] = {}
    for event in _json_events(events):
        kind = event.get("type")
        if kind == "message_start":
            message = dict(event["message"])
            message["usage"] = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            blocks[int(event["index"])] = dict(event["content_block"])
        elif kind == "content_block_delta":
            index, delta = int(event["index"]), event["delta"]
            block = blocks.setdefault(index, {"type": "text", "text": ""})
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + delta["text"]
            elif delta.get("type") == "input_json_delta":
                partial_json[index] = partial_json.get(index, "") + delta["partial_json"]
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif delta.get("type") == "signature_delta":
                block["signature"] = delta["signature"]
        elif kind == "message_delta":
            message.update({k: v for k, v in (event.get("delta") or {}).items()})
            message.setdefault("usage", {}).update(event.get("usage") or {})
    for index, text in partial_json.items():
        blocks[index]["input"] = json.loads(text) if text else {}
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


# -- synthesise: full response -> stream --------------------------------------------------
def synthesise(
    endpoint: str, response: dict[str, Any], include_usage: bool = True
) -> list[SseEvent]:
    """A stream equivalent to ``response``, as the provider would have sent it."""
    if endpoint == "chat":
        return _synthesise_chat(response, include_usage)
    if endpoint == "responses":
        return _synthesise_responses(response)
    if endpoint == "messages":
        return _synthesise_messages(response)
    raise ValueError(f"no stream synthesis for endpoint {endpoint!r}")


def _synthesise_chat(response: dict[str, Any], include_usage: bool) -> list[SseEvent]:
    base: dict[str, Any] = {
        k: response[k] for k in ("id", "created", "model", "system_fingerprint") if k in response
    }
    base["object"] = "chat.completion.chunk"
    out: list[SseEvent] = []
    for choice in response.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        delta: dict[str, Any] = {
            "role": message.get("role", "assistant"),
            "content": message.get("content") or "",
        }
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {**call, "index": n} for n, call in enumerate(message["tool_calls"])
            ]
        out.append(
            SseEvent(
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {
                                "index": index,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        )
        out.append(
            SseEvent(
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {
                                "index": index,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": choice.get("finish_reason") or "stop",
                            }
                        ],
                    }
                )
            )
        )
    if include_usage and response.get("usage"):
        out.append(SseEvent(json.dumps({**base, "choices": [], "usage": response["usage"]})))
    out.append(SseEvent("[DONE]"))
    return out


def _synthesise_responses(response: dict[str, Any]) -> list[SseEvent]:
    out: list[SseEvent] = []

    def emit(kind: str, payload: dict[str, Any]) -> None:
        out.append(
            SseEvent(json.dumps({"type": kind, "sequence_number": len(out), **payload}), kind)
        )

    emit(
        "response.created",
        {"response": {**response, "status": "in_progress", "output": [], "usage": None}},
    )
    for position, item in enumerate(response.get("output") or []):
        emit(
            "response.output_item.added",
            {
                "output_index": position,
                "item": {**item, "status": "in_progress", "content": []}
                if item.get("type") == "message"
                else item,
            },
        )
        if item.get("type") == "message":
            for part_index, part in enumerate(item.get("content") or []):
                if part.get("type") != "output_text":
                    continue
                ids = {
                    "item_id": item.get("id", ""),
                    "output_index": position,
                    "content_index": part_index,
                }
                emit("response.content_part.added", {**ids, "part": {**part, "text": ""}})
                emit(
                    "response.output_text.delta",
                    {**ids, "delta": part.get("text", ""), "logprobs": []},
                )
                emit(
                    "response.output_text.done",
                    {**ids, "text": part.get("text", ""), "logprobs": []},
                )
                emit("response.content_part.done", {**ids, "part": part})
        emit("response.output_item.done", {"output_index": position, "item": item})
    emit("response.completed", {"response": response})
    return out


def _synthesise_messages(response: dict[str, Any]) -> list[SseEvent]:
    out: list[SseEvent] = []

    def emit(kind: str, payload: dict[str, Any]) -> None:
        out.append(SseEvent(json.dumps({"type": kind, **payload}), kind))

    usage = dict(response.get("usage") or {})
    start = {
        **response,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": min(1, int(usage.get("output_tokens", 0)))},
    }
    emit("message_start", {"message": start})
    for index, block in enumerate(response.get("content") or []):
        kind = block.get("type")
        if kind == "text":
            emit(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            emit(
                "content_block_delta",
                {"index": index, "delta": {"type": "text_delta", "text": block.get("text", "")}},
            )
        elif kind == "tool_use":
            emit("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            emit(
                "content_block_delta",
                {
                    "index": index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(block.get("input", {})),
                    },
                },
            )
        elif kind == "thinking":
            emit(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            )
            emit(
                "content_block_delta",
                {
                    "index": index,
                    "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")},
                },
            )
            if block.get("signature"):
                emit(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    },
                )
        else:
            emit("content_block_start", {"index": index, "content_block": block})
        emit("content_block_stop", {"index": index})
    emit(
        "message_delta",
        {
            "delta": {
                "stop_reason": response.get("stop_reason"),
                "stop_sequence": response.get("stop_sequence"),
            },
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        },
    )
    emit("message_stop", {})
    return out
