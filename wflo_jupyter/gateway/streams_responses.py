"""OpenAI Responses API streams: assemble one (its final ``response.completed`` event
holds the whole response) and synthesise one from a full response.

A synthesised stream sends ``response.created``, ``response.in_progress``, then per
output item ``response.output_item.added``, its deltas (``output_text`` for a message,
``function_call_arguments`` for a function call) and ``response.output_item.done``, and
finally ``response.completed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wflo_jupyter.gateway.sse import SseEvent, json_events, pieces

_FINAL = ("response.completed", "response.incomplete", "response.failed")


def assemble_responses(events: Iterable[SseEvent]) -> dict[str, Any]:
    final: dict[str, Any] | None = None
    for event in json_events(events):
        if event.get("type") in _FINAL:
            final = event.get("response")
    if final is None:
        raise ValueError("the responses stream ended without a final response event")
    return final


class _Emitter:
    def __init__(self) -> None:
        self.events: list[SseEvent] = []

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        body = {"type": kind, "sequence_number": len(self.events), **payload}
        self.events.append(SseEvent(json.dumps(body), kind))


def synthesise_responses(response: dict[str, Any]) -> list[SseEvent]:
    emit = _Emitter()
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", {"response": opening})
    emit("response.in_progress", {"response": opening})
    for position, item in enumerate(response.get("output") or []):
        kind = item.get("type")
        if kind == "message":
            emit(
                "response.output_item.added",
                {
                    "output_index": position,
                    "item": {**item, "status": "in_progress", "content": []},
                },
            )
            _message_parts(emit, position, item)
        elif kind == "function_call":
            started = {**item, "arguments": "", "status": "in_progress"}
            emit("response.output_item.added", {"output_index": position, "item": started})
            ids = {"item_id": item.get("id", ""), "output_index": position}
            arguments = str(item.get("arguments") or "")
            for piece in pieces(arguments):
                emit("response.function_call_arguments.delta", {**ids, "delta": piece})
            emit(
                "response.function_call_arguments.done",
                {**ids, "arguments": arguments, "name": item.get("name", "")},
            )
        else:
            emit("response.output_item.added", {"output_index": position, "item": item})
        emit("response.output_item.done", {"output_index": position, "item": item})
    emit("response.completed", {"response": response})
    return emit.events


def _message_parts(emit: _Emitter, position: int, item: dict[str, Any]) -> None:
    for part_index, part in enumerate(item.get("content") or []):
        if part.get("type") != "output_text":
            continue
        ids = {"item_id": item.get("id", ""), "output_index": position, "content_index": part_index}
        emit("response.content_part.added", {**ids, "part": {**part, "text": ""}})
        text = part.get("text", "")
        for piece in pieces(text):
            emit("response.output_text.delta", {**ids, "delta": piece, "logprobs": []})
        emit("response.output_text.done", {**ids, "text": text, "logprobs": []})
        emit("response.content_part.done", {**ids, "part": part})
