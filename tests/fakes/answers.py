"""What the fake provider answers, in each wire format, full or as stream events.

Honours the request's shape as the real APIs do: ``response_format`` / ``text.format`` /
``output_config.format`` (JSON text; schema instances from ``core.simulated``), tools
with a tool choice (a forced choice always calls; ``auto`` calls unless the last turn is
a tool result), ``n`` choices. Written apart from the product's mock (``gateway/shapes``)
so the gateway is checked against a second reading of the formats.
"""

from __future__ import annotations

import json
import uuid
from itertools import zip_longest
from typing import Any

from wflo_jupyter.core.simulated import instance

Event = tuple[dict[str, Any] | str, str | None]  # (data, SSE event name)


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raw = body.get("input")
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        for item in reversed(raw):
            if isinstance(item, dict) and item.get("role") == "user":
                return str(item.get("content"))
    return json.dumps(raw)[:200] if raw is not None else ""


def answer_text(body: dict[str, Any]) -> str:
    """The deterministic prose answer to a request: 'echo: <last user text>'."""
    return f"echo: {last_user_text(body)}"


def _tool_specs(body: dict[str, Any]) -> dict[str, Any]:
    """name -> parameters schema, whatever the format nests them in."""
    specs: dict[str, Any] = {}
    for tool in body.get("tools") or []:
        inner = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        schema = inner.get("parameters", inner.get("input_schema"))
        if inner.get("name") and (schema is not None or tool.get("type") == "function"):
            specs[inner["name"]] = schema or {"type": "object", "properties": {}}
    return specs


def _ended_with_tool_result(body: dict[str, Any]) -> bool:
    turns = body.get("messages") or (body["input"] if isinstance(body.get("input"), list) else [])
    last = turns[-1] if turns else {}
    content = last.get("content")
    blocks = content if isinstance(content, list) else []
    return (
        last.get("role") == "tool"
        or last.get("type") == "function_call_output"
        or any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
    )


def tool_to_call(body: dict[str, Any], variant: int = 0) -> tuple[str, Any] | None:
    """``(name, arguments)`` of the call the request gets, or None for a prose answer."""
    specs = _tool_specs(body)
    choice = body.get("tool_choice", "auto")
    if not specs or choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    named = None
    if isinstance(choice, dict):
        named = choice.get("name") or (choice.get("function") or {}).get("name")
    forced = (
        named or choice == "required" or (isinstance(choice, dict) and choice.get("type") == "any")
    )
    if not forced and _ended_with_tool_result(body):
        return None
    name = named if named in specs else sorted(specs)[0]
    return name, instance(specs[name], f"fake:{name}:{variant}")


def json_text(body: dict[str, Any], variant: int = 0) -> str | None:
    """The JSON answer to a structured-output request, else None."""
    fmt = body.get("response_format") or (body.get("text") or {}).get("format")
    fmt = fmt or (body.get("output_config") or {}).get("format") or body.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    if fmt["type"] == "json_object":
        return json.dumps({"echo": last_user_text(body)})
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    return json.dumps(instance(schema, f"fake:{variant}"))


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _capped(body: dict[str, Any], tokens: int) -> int:
    limit = (
        body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    )
    return min(tokens, int(limit)) if limit else tokens


# -- Chat Completions -------------------------------------------------------------------
def chat_choices(body: dict[str, Any]) -> list[dict[str, Any]]:
    choices = []
    for index in range(int(body.get("n") or 1)):
        call = tool_to_call(body, index)
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if call:
            function = {"name": call[0], "arguments": json.dumps(call[1])}
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:20]}", "type": "function", "function": function}
            ]
        else:
            suffix = f" ({index + 1})" if index else ""
            message["content"] = json_text(body, index) or answer_text(body) + suffix
        finish = "tool_calls" if call else "stop"
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    return choices


def visible_tokens(body: dict[str, Any], choices: list[dict[str, Any]]) -> int:
    total = 0
    for choice in choices:
        message = choice["message"]
        written = message.get("content") or "".join(
            c["function"]["arguments"] for c in message.get("tool_calls") or []
        )
        total += _capped(
            body, _tokens(written) if message.get("content") else max(1, len(written) // 4)
        )
    return total


def chat_stream(base: dict[str, Any], choices: list[dict[str, Any]]) -> list[Event]:
    """Chunks of every choice, interleaved as a provider sends them for ``n > 1``."""
    per_choice = []
    for choice in choices:
        index, message = choice["index"], choice["message"]
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": "" if message["content"] is not None else None}
        ]
        words = (message["content"] or "").split(" ")
        deltas += [{"content": w + " "} for w in words[:-1]] + (
            [{"content": words[-1]}] if message["content"] else []
        )
        for n, call in enumerate(message.get("tool_calls") or []):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": n,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            deltas += [
                {"tool_calls": [{"index": n, "function": {"arguments": part}}]}
                for part in (arguments[:half], arguments[half:])
            ]
        chunks = [
            {"index": index, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas
        ]
        chunks.append(
            {
                "index": index,
                "delta": {},
                "logprobs": None,
                "finish_reason": choice["finish_reason"],
            }
        )
        per_choice.append(chunks)
    return [({**base, "choices": [c]}, None) for row in zip_longest(*per_choice) for c in row if c]


# -- Responses ------------------------------------------------------------------------------
def responses_output(body: dict[str, Any]) -> list[dict[str, Any]]:
    call = tool_to_call(body)
    if call:
        return [
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex[:12]}",
                "call_id": f"call_{uuid.uuid4().hex[:12]}",
                "name": call[0],
                "arguments": json.dumps(call[1]),
                "status": "completed",
            }
        ]
    text = json_text(body) or answer_text(body)
    return [
        {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]


def responses_stream(response: dict[str, Any]) -> list[Event]:
    events: list[Event] = []

    def emit(kind: str, payload: dict[str, Any]) -> None:
        events.append(({"type": kind, "sequence_number": len(events), **payload}, kind))

    emit(
        "response.created",
        {"response": {**response, "status": "in_progress", "output": [], "usage": None}},
    )
    for at, item in enumerate(response["output"]):
        ids = {"item_id": item["id"], "output_index": at}
        if item["type"] == "function_call":
            emit(
                "response.output_item.added",
                {"output_index": at, "item": {**item, "arguments": "", "status": "in_progress"}},
            )
            emit("response.function_call_arguments.delta", {**ids, "delta": item["arguments"]})
            emit(
                "response.function_call_arguments.done",
                {**ids, "name": item["name"], "arguments": item["arguments"]},
            )
        else:
            text = item["content"][0]["text"]
            emit(
                "response.output_item.added",
                {"output_index": at, "item": {**item, "status": "in_progress", "content": []}},
            )
            emit(
                "response.content_part.added",
                {
                    **ids,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            )
            emit(
                "response.output_text.delta",
                {**ids, "content_index": 0, "delta": text, "logprobs": []},
            )
            emit(
                "response.output_text.done",
                {**ids, "content_index": 0, "text": text, "logprobs": []},
            )
        emit("response.output_item.done", {"output_index": at, "item": item})
    emit("response.completed", {"response": response})
    return events


# -- Anthropic Messages -------------------------------------------------------------------
def message_content(body: dict[str, Any]) -> list[dict[str, Any]]:
    call = tool_to_call(body)
    if call:
        return [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:20]}",
                "name": call[0],
                "input": call[1],
            }
        ]
    return [{"type": "text", "text": json_text(body) or answer_text(body)}]


def message_stream(message: dict[str, Any], usage: dict[str, Any]) -> list[Event]:
    events: list[Event] = []

    def emit(kind: str, payload: dict[str, Any]) -> None:
        events.append(({"type": kind, **payload}, kind))

    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    emit("message_start", {"message": start})
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            emit("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            raw = json.dumps(block["input"])
            for part in ("", raw[: len(raw) // 2], raw[len(raw) // 2 :]):
                emit(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": part}},
                )
        else:
            emit(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            words = block["text"].split(" ")
            for piece in [w + " " for w in words[:-1]] + [words[-1]]:
                emit(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "text_delta", "text": piece}},
                )
        emit("content_block_stop", {"index": index})
    emit(
        "message_delta",
        {
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    emit("message_stop", {})
    return events
