"""The mock's response bodies in each provider's wire format, from its planned replies.

``MockUpstream`` decides the replies (``shapes.plan_reply``) and counts their tokens;
this module only lays them out as OpenAI Chat Completions, Responses, Anthropic
Messages and embeddings bodies, with usage in each format's own fields.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wflo_jupyter.gateway.shapes import Reply


@dataclass(frozen=True)
class Counted:
    """One choice's reply with its token counts (visible output and hidden reasoning)."""

    reply: Reply
    output_tokens: int
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.output_tokens + self.reasoning_tokens


def _ident(choices: Sequence[Counted]) -> str:
    text = json.dumps([[c.reply.text, [x.ident for x in c.reply.calls]] for c in choices])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def chat_body(model: str, prompt_tokens: int, choices: Sequence[Counted]) -> dict[str, Any]:
    out_choices = []
    for index, choice in enumerate(choices):
        reply = choice.reply
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": call.ident,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in reply.calls
            ]
        out_choices.append(
            {
                "index": index,
                "finish_reason": "tool_calls" if reply.calls else "stop",
                "logprobs": None,
                "message": message,
            }
        )
    completion = sum(c.total for c in choices)
    return {
        "id": f"chatcmpl-sim-{_ident(choices)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "wflo-simulated",
        "choices": out_choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": sum(c.reasoning_tokens for c in choices)
            },
        },
    }


def responses_body(
    model: str, prompt_tokens: int, choice: Counted, request: Mapping[str, Any]
) -> dict[str, Any]:
    ident = _ident([choice])
    output: list[dict[str, Any]] = []
    if choice.reasoning_tokens:
        output.append({"type": "reasoning", "id": f"rs_sim_{ident}", "summary": []})
    for call in choice.reply.calls:
        output.append(
            {
                "type": "function_call",
                "id": f"fc_sim_{ident}",
                "call_id": call.ident,
                "name": call.name,
                "arguments": call.arguments_json,
                "status": "completed",
            }
        )
    if choice.reply.text is not None:
        output.append(
            {
                "type": "message",
                "id": f"msg_sim_{ident}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": choice.reply.text, "annotations": []}],
            }
        )
    text = request.get("text") if isinstance(request.get("text"), Mapping) else None
    return {
        "id": f"resp_sim_{ident}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": list(request.get("tools") or []),
        "text": text or {"format": {"type": "text"}},
        "reasoning": request.get("reasoning"),
        "output": output,
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": choice.total,
            "output_tokens_details": {"reasoning_tokens": choice.reasoning_tokens},
            "total_tokens": prompt_tokens + choice.total,
        },
    }


def messages_body(model: str, prompt_tokens: int, choice: Counted) -> dict[str, Any]:
    reply = choice.reply
    content: list[dict[str, Any]] = []
    if reply.text is not None:
        content.append({"type": "text", "text": reply.text})
    for call in reply.calls:
        content.append(
            {"type": "tool_use", "id": call.ident, "name": call.name, "input": call.arguments}
        )
    return {
        "id": f"msg_sim_{_ident([choice])}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.calls else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt_tokens,
            "output_tokens": choice.total,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def embeddings_body(model: str, prompt_tokens: int, raw: Any) -> dict[str, Any]:
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
