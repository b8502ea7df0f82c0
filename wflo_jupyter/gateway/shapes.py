"""What shape a request asks its answer in, and the simulated answer of that shape.

Reads the three wire formats (Chat Completions, Responses, Anthropic Messages) for a
structured-output format (``json_object`` / ``json_schema``), tools with a tool choice,
and a reasoning model; and decides, deterministically from the request digest, the
mock's reply: prose, JSON text valid against the schema, or one tool call with
arguments valid against the tool's parameters. ``auto`` calls a tool unless the
conversation's last turn is a tool result (so agent loops end); ``none`` never does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wflo_jupyter.core.simulated import compact, instance, json_object

_REASONING_MODEL = re.compile(r"^(?:.*/)?(?:o\d|gpt-5|gpt-oss|codex)", re.IGNORECASE)
_EFFORT_TOKENS = {"none": 0, "minimal": 0, "low": 64, "medium": 192, "high": 448, "xhigh": 768}


@dataclass(frozen=True)
class ToolCall:
    """One simulated call: ``arguments`` is a JSON value valid against the tool's schema."""

    ident: str
    name: str
    arguments: Any

    @property
    def arguments_json(self) -> str:
        return compact(self.arguments)


@dataclass(frozen=True)
class Reply:
    """One choice's answer: ``text`` (prose or JSON text, None with a tool call), calls."""

    text: str | None
    calls: tuple[ToolCall, ...] = field(default=())
    is_json: bool = False


_TRANSPORT = ("stream", "stream_options")


def digest(body: Mapping[str, Any]) -> str:
    """The request's fingerprint, the seed of every simulated choice: the same question
    gets the same answer, streamed or not."""
    asked = {k: v for k, v in body.items() if k not in _TRANSPORT}
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()


def is_reasoning(model: str, body: Mapping[str, Any]) -> bool:
    return bool(
        _REASONING_MODEL.match(model) or body.get("reasoning") or body.get("reasoning_effort")
    )


def reasoning_tokens(model: str, body: Mapping[str, Any], seed: str) -> int:
    """Deterministic hidden reasoning tokens for a reasoning model (0 for the others)."""
    if not is_reasoning(model, body):
        return 0
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort") or (
        reasoning.get("effort") if isinstance(reasoning, Mapping) else None
    )
    base = _EFFORT_TOKENS.get(str(effort or "medium"), _EFFORT_TOKENS["medium"])
    return base + int(seed[:4], 16) % 64 if base else 0


# -- requests: the tools offered and the choice made ----------------------------------------
def _tools(body: Mapping[str, Any], endpoint: str) -> list[tuple[str, Any]]:
    """``(name, parameters schema)`` of every function tool the request offers."""
    out: list[tuple[str, Any]] = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, Mapping):
            continue
        if endpoint == "chat" and tool.get("type", "function") == "function":
            function = tool.get("function") or {}
            if function.get("name"):
                out.append((str(function["name"]), function.get("parameters")))
        elif endpoint == "responses" and tool.get("type") == "function" and tool.get("name"):
            out.append((str(tool["name"]), tool.get("parameters")))
        elif endpoint == "messages" and tool.get("name") and "input_schema" in tool:
            out.append((str(tool["name"]), tool.get("input_schema")))
    return out


def _choice(body: Mapping[str, Any], endpoint: str) -> tuple[str, set[str] | None]:
    """``(mode, allowed names)``: mode is ``none``, ``auto`` or ``required``."""
    raw = body.get("tool_choice")
    if raw is None:
        return "auto", None
    if isinstance(raw, str):
        return {"any": "required"}.get(raw, raw), None
    if not isinstance(raw, Mapping):
        return "auto", None
    kind = str(raw.get("type") or "")
    if kind in ("any", "required"):
        return "required", None
    if kind in ("none", "auto"):
        return kind, None
    if kind == "allowed_tools":
        inner = raw.get("allowed_tools") if endpoint == "chat" else raw
        inner = inner if isinstance(inner, Mapping) else {}
        names = {_tool_name(t) for t in inner.get("tools") or [] if isinstance(t, Mapping)}
        return str(inner.get("mode") or "auto"), names
    name = _tool_name(raw)
    return ("required", {name}) if name else ("auto", None)


def _tool_name(spec: Mapping[str, Any]) -> str:
    function = spec.get("function")
    if isinstance(function, Mapping) and function.get("name"):
        return str(function["name"])
    return str(spec.get("name") or "")


def after_tool_result(body: Mapping[str, Any], endpoint: str) -> bool:
    """Is the conversation's last turn a tool's result (so the model should answer)?"""
    if endpoint == "responses":
        items = body.get("input")
        if not isinstance(items, list) or not items:
            return False
        last = items[-1]
        return isinstance(last, Mapping) and last.get("type") == "function_call_output"
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], Mapping):
        return False
    last = messages[-1]
    if last.get("role") in ("tool", "function"):
        return True
    content = last.get("content")
    return isinstance(content, list) and any(
        isinstance(part, Mapping) and part.get("type") == "tool_result" for part in content
    )


def _format(body: Mapping[str, Any], endpoint: str) -> Mapping[str, Any] | None:
    """The structured-output format asked for: ``{"type": ..., "schema": ...}`` or None."""
    if endpoint == "chat":
        raw = body.get("response_format")
        if isinstance(raw, Mapping) and raw.get("type") == "json_schema":
            spec = raw.get("json_schema") or {}
            return {"type": "json_schema", "schema": spec.get("schema") or {}}
    elif endpoint == "responses":
        text = body.get("text")
        raw = text.get("format") if isinstance(text, Mapping) else None
    else:
        config = body.get("output_config")
        raw = config.get("format") if isinstance(config, Mapping) else None
        raw = raw or body.get("output_format")
    if isinstance(raw, Mapping) and raw.get("type") in ("json_object", "json_schema"):
        return raw
    return None


# -- the reply ------------------------------------------------------------------------------
def plan_reply(
    endpoint: str, body: Mapping[str, Any], seed: str, text: str, id_prefix: str
) -> Reply:
    """The mock's answer of the shape ``body`` asks for; ``text`` is its prose."""
    tools = _tools(body, endpoint)
    mode, allowed = _choice(body, endpoint)
    if allowed is not None:
        tools = [tool for tool in tools if tool[0] in allowed]
    wants_call = bool(tools) and (
        mode == "required" or (mode == "auto" and not after_tool_result(body, endpoint))
    )
    if wants_call:
        name, schema = tools[int(seed[:8], 16) % len(tools)]
        arguments = instance(schema if schema else {"type": "object"}, f"{seed}:{name}")
        ident = f"{id_prefix}{seed[:24]}"
        return Reply(None, (ToolCall(ident, name, arguments),))
    shape = _format(body, endpoint)
    if shape is None:
        return Reply(text)
    if shape.get("type") == "json_object":
        return Reply(compact(json_object(seed, text)), is_json=True)
    return Reply(compact(instance(shape.get("schema") or {}, seed)), is_json=True)
