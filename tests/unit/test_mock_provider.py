"""``WFLO_PROVIDER=mock`` answers in the providers' formats, deterministically, with usage
from the given tokenizer, and says it is simulated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from wflo_jupyter.gateway.mock import SIMULATED_HEADER, MockUpstream
from wflo_jupyter.gateway.streams import assemble, parse_events


def words(provider: str, model: str, body: Mapping[str, Any]) -> int:
    return max(1, len(json.dumps(body).split()))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}),
        (
            "/v1/messages",
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
    ],
)
def test_deterministic_simulated_answers(path: str, body: dict[str, Any]) -> None:
    mock = MockUpstream(words)
    with mock.send("openai", path, json.dumps(body).encode(), {}) as first:
        assert first.headers[SIMULATED_HEADER] == "true"
        one = json.loads(first.body)
    with mock.send("openai", path, json.dumps(body).encode(), {}) as second:
        two = json.loads(second.body)
    assert one == {**two, **{k: one[k] for k in ("created", "created_at") if k in one}}
    text = json.dumps(one)
    assert "Simulated answer" in text


def test_max_tokens_is_respected_and_usage_uses_the_tokenizer() -> None:
    mock = MockUpstream(words)
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "a b c d e f"}],
    }
    answer = mock.answer("anthropic", "messages", body)
    assert len(answer["content"][0]["text"].split()) == 3
    assert answer["usage"]["input_tokens"] == words("anthropic", "m", body)
    assert answer["usage"]["output_tokens"] <= 3


def test_streams_are_synthesised() -> None:
    mock = MockUpstream(words)
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "stream me"}],
    }
    with mock.send(
        "openai", "/v1/chat/completions", json.dumps(body).encode(), {}, stream=True
    ) as reply:
        assert reply.chunks is not None
        raw = b"".join(reply.chunks)
    assembled = assemble("chat", parse_events(raw))
    assert "stream me" in assembled["choices"][0]["message"]["content"]
    assert assembled["usage"]["prompt_tokens"] > 0


def test_embeddings() -> None:
    answer = MockUpstream(words).answer("openai", "embeddings", {"model": "e", "input": ["x", "y"]})
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert len(answer["data"][0]["embedding"]) == 16
