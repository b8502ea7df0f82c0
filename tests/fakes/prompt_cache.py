"""Anthropic prompt caching, as the fake provider bills it.

A request whose tools, system blocks or message blocks carry ``cache_control`` caches
everything up to and including the last such block (Anthropic's order: tools, then
system, then messages). The first request with a given prefix writes it
(``cache_creation_input_tokens``); later ones read it (``cache_read_input_tokens``); the
rest of the prompt is ``input_tokens``. Token counts use the fake's own rule (one token
per four characters of JSON).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _blocks(body: dict[str, Any]) -> list[Any]:
    """The prompt's blocks in the order Anthropic caches them."""
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, str):
        blocks.append({"type": "text", "text": system})
    elif isinstance(system, list):
        blocks.extend(system)
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks.extend(content)
        else:
            blocks.append(message)
    return blocks


def _tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


def cache_usage(body: dict[str, Any], written: set[str]) -> dict[str, int]:
    """``input_tokens`` and the two cache counts of ``body``; ``written`` holds the digests
    of prefixes already cached (updated here)."""
    blocks = _blocks(body)
    marked = [i for i, b in enumerate(blocks) if isinstance(b, dict) and "cache_control" in b]
    if not marked:
        return {
            "input_tokens": _tokens(body.get("messages")),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    prefix, rest = blocks[: marked[-1] + 1], blocks[marked[-1] + 1 :]
    digest = hashlib.sha256(
        json.dumps([body.get("model"), prefix], sort_keys=True).encode()
    ).hexdigest()
    cached = _tokens(prefix)
    hit = digest in written
    written.add(digest)
    return {
        "input_tokens": _tokens(rest) if rest else 0,
        "cache_creation_input_tokens": 0 if hit else cached,
        "cache_read_input_tokens": cached if hit else 0,
    }
