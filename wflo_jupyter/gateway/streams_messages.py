"""Anthropic Messages streams: assemble one into the full ``message`` it stands for, and
synthesise one from a full message.

A synthesised stream sends ``message_start``, then per content block
``content_block_start``, its deltas (``text_delta`` pieces; ``input_json_delta`` pieces of
a ``tool_use`` block's input; ``thinking_delta`` / ``signature_delta``) and
``content_block_stop``, then ``message_delta`` (stop reason, output tokens) and
``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wflo_jupyter.gateway.sse import SseEvent, json_events, pieces


def assemble_messages(events: Iterable[SseEvent]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, str] = {}
    for event in json_events(events):
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


def synthesise_messages(response: dict[str, Any]) -> list[SseEvent]:
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
            for piece in pieces(block.get("text", "")):
                emit(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "text_delta", "text": piece}},
                )
        elif kind == "tool_use":
            emit("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            for piece in pieces(json.dumps(block.get("input", {}))):
                emit(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
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
