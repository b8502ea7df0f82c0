"""A raw HTTP/1.0 client for the server extension's event stream: it sends exactly the
headers given (or no token at all), reads the status line, then parses server-sent
events as they arrive, each with the monotonic time it was read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """One SSE block: ``event``/``data`` fields, or a comment (``: text``)."""

    event: str | None = None
    data: str = ""
    comment: str | None = None
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    @classmethod
    async def open(cls, port: int, url: str, headers: dict[str, str]) -> EventStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"GET {url} HTTP/1.0", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        stream = cls(reader, writer)
        status_line = await asyncio.wait_for(reader.readline(), 10)
        stream.status = int(status_line.split()[1])
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            stream.headers[name.strip().lower()] = value.strip()
        if stream.status != 200:
            stream.body = await asyncio.wait_for(reader.read(), 10)
        return stream

    async def next(self, timeout: float = 10.0) -> Message:
        """The next message or comment block."""
        message = Message()
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if raw == b"":
                raise EOFError("the server closed the stream")
            line = raw.decode().rstrip("\n")
            if line == "":
                if message.event or message.data or message.comment is not None:
                    message.at = time.monotonic()
                    return message
                continue
            if line.startswith(":"):
                message.comment = line[1:].strip()
            elif line.startswith("event:"):
                message.event = line[6:].strip()
            elif line.startswith("data:"):
                message.data += line[5:].strip()

    async def next_event(self, kind: str, timeout: float = 10.0) -> Message:
        """The next message of event type ``kind`` (others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message.event == kind:
                return message

    def collect(self) -> asyncio.Queue[Message]:
        """Read every message from now on in a task of its own, each stamped when it
        arrived (not when the test gets to it); the queue ends with nothing more."""
        messages: asyncio.Queue[Message] = asyncio.Queue()

        async def pump() -> None:
            with contextlib.suppress(EOFError, asyncio.TimeoutError, ConnectionError):
                while True:
                    await messages.put(await self.next(3600))

        self._pump = asyncio.ensure_future(pump())
        return messages

    def close(self) -> None:
        if getattr(self, "_pump", None) is not None:
            self._pump.cancel()
        self.writer.close()
