"""Server-sent events: one event, an incremental parser, and the helpers the per-endpoint
stream modules (``streams_chat``, ``streams_responses``, ``streams_messages``) share."""

from __future__ import annotations

import json
import math
import re
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


def json_events(events: Iterable[SseEvent]) -> Iterator[dict[str, Any]]:
    for event in events:
        if event.data and event.data != "[DONE]":
            try:
                value = json.loads(event.data)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value


def pieces(text: str, parts: int = 6) -> list[str]:
    """``text`` cut at word starts into at most ``parts`` consecutive pieces (at least
    one, maybe empty), as a provider streams it."""
    words = re.findall(r"\s*\S+|\s+", text)
    if not words:
        return [""]
    size = max(1, math.ceil(len(words) / parts))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]
