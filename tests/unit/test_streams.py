"""SSE assembly and synthesis, checked against the fake provider's real streams and by
letting the official SDKs parse the synthesised streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.providers import FakeProvider
from wflo_jupyter.gateway.streams import SseParser, assemble, parse_events, synthesise


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


def _post(fake: FakeProvider, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{fake.url}{path}", json=body, timeout=10)


CASES = [
    (
        "chat",
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "one two"}],
            "stream_options": {"include_usage": True},
        },
    ),
    ("responses", "/v1/responses", {"model": "gpt-4o-mini", "input": "three four"}),
    (
        "messages",
        "/v1/messages",
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "five"}],
        },
    ),
]


@pytest.mark.parametrize(("endpoint", "path", "body"), CASES)
def test_assembled_stream_equals_the_full_response(
    fake: FakeProvider, endpoint: str, path: str, body: dict[str, Any]
) -> None:
    full = _post(fake, path, body).json()
    streamed = _post(fake, path, {**body, "stream": True})
    assembled = assemble(endpoint, parse_events(streamed.content))
    if endpoint == "chat":
        assert (
            assembled["choices"][0]["message"]["content"]
            == full["choices"][0]["message"]["content"]
        )
        assert assembled["usage"] == full["usage"]
    elif endpoint == "responses":
        assert (
            assembled["output"][0]["content"][0]["text"] == full["output"][0]["content"][0]["text"]
        )
        assert assembled["usage"] == full["usage"]
    else:
        assert assembled["content"] == full["content"]
        assert assembled["usage"]["output_tokens"] == full["usage"]["output_tokens"]
        assert assembled["usage"]["input_tokens"] == full["usage"]["input_tokens"]
        assert assembled["stop_reason"] == "end_turn"


@pytest.mark.parametrize(("endpoint", "path", "body"), CASES)
def test_synthesise_then_assemble_round_trips(
    fake: FakeProvider, endpoint: str, path: str, body: dict[str, Any]
) -> None:
    full = _post(fake, path, body).json()
    raw = b"".join(e.encode() for e in synthesise(endpoint, full))
    again = assemble(endpoint, parse_events(raw))
    if endpoint == "responses":
        assert again == full
    else:
        assert (
            again["usage"]["output_tokens" if endpoint == "messages" else "completion_tokens"]
            == (full["usage"]["output_tokens" if endpoint == "messages" else "completion_tokens"])
        )


def test_openai_sdk_reads_synthesised_chat_stream(fake: FakeProvider) -> None:
    full = _post(fake, *CASES[0][1:]).json()
    raw = b"".join(e.encode() for e in synthesise("chat", full))
    fake.replay_next(raw)
    client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two"
    assert chunks[-1].usage is not None


def test_openai_sdk_reads_synthesised_responses_stream(fake: FakeProvider) -> None:
    full = _post(fake, *CASES[1][1:]).json()
    raw = b"".join(e.encode() for e in synthesise("responses", full))
    fake.replay_next(raw)
    client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
    with client.responses.stream(model="gpt-4o-mini", input="x") as stream:
        assert stream.get_final_response().output_text == "echo: three four"


def test_anthropic_sdk_reads_synthesised_messages_stream(fake: FakeProvider) -> None:
    full = _post(fake, *CASES[2][1:]).json()
    raw = b"".join(e.encode() for e in synthesise("messages", full))
    fake.replay_next(raw)
    client = anthropic.Anthropic(api_key="k", base_url=fake.url, max_retries=0)
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=[]) as stream:
        assert stream.get_final_text() == "echo: five"
        assert stream.get_final_message().usage.output_tokens == full["usage"]["output_tokens"]


def test_tool_calls_survive_a_round_trip() -> None:
    chat = {
        "id": "c",
        "created": 1,
        "model": "m",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
            }
        ],
    }
    again = assemble("chat", synthesise("chat", chat))
    assert (
        again["choices"][0]["message"]["tool_calls"] == chat["choices"][0]["message"]["tool_calls"]
    )
    message = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 4},
        "content": [{"type": "tool_use", "id": "tu", "name": "f", "input": {"x": [1, 2]}}],
    }
    assert assemble("messages", synthesise("messages", message))["content"] == message["content"]


def test_parser_handles_split_chunks_and_comments() -> None:
    parser = SseParser()
    raw = b': keep-alive\n\nevent: a\ndata: {"x": 1}\n\ndata: [DONE]\n\n'
    events = []
    for i in range(len(raw)):
        events.extend(parser.feed(raw[i : i + 1]))
    assert [(e.event, e.data) for e in events] == [("a", json.dumps({"x": 1})), (None, "[DONE]")]
