"""``WFLO_PROVIDER=mock`` answers in the providers' formats, deterministically, with usage
from the given tokenizer, and says it is simulated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from wflo_jupyter.gateway.mock import SIMULATED_HEADER, MockUpstream
from wflo_jupyter.gateway.streams import assemble, parse_events, synthesise


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


def _assistant_words(text: str) -> int:
    return words("openai", "m", {"messages": [{"role": "assistant", "content": text}]})


def test_n_choices_differ_and_usage_counts_them_all() -> None:
    body = {"model": "gpt-4o-mini", "n": 3, "messages": [{"role": "user", "content": "hi"}]}
    answer = MockUpstream(words).answer("openai", "chat", body)
    texts = [c["message"]["content"] for c in answer["choices"]]
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3 and all("Simulated answer" in t for t in texts)
    assert answer["usage"]["completion_tokens"] == sum(_assistant_words(t) for t in texts)
    assert MockUpstream(words).answer("openai", "chat", body)["choices"] == answer["choices"]


@pytest.mark.parametrize(
    ("model", "extra"),
    [("o4-mini", {}), ("gpt-5-mini", {}), ("gpt-4o-mini", {"reasoning_effort": "high"})],
)
def test_reasoning_models_report_reasoning_tokens(model: str, extra: dict[str, Any]) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "think"}], **extra}
    usage = MockUpstream(words).answer("openai", "chat", body)["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning < usage["completion_tokens"]
    capped = MockUpstream(words).answer("openai", "chat", {**body, "max_completion_tokens": 40})[
        "usage"
    ]
    assert capped["completion_tokens"] <= 40
    plain = {"model": "gpt-4o-mini", "messages": body["messages"]}
    assert (
        MockUpstream(words).answer("openai", "chat", plain)["usage"]["completion_tokens_details"][
            "reasoning_tokens"
        ]
        == 0
    )


def test_reasoning_effort_and_the_responses_reasoning_item() -> None:
    mock = MockUpstream(words)
    low = mock.answer(
        "openai", "responses", {"model": "o4-mini", "input": "x", "reasoning": {"effort": "low"}}
    )
    high = mock.answer(
        "openai", "responses", {"model": "o4-mini", "input": "x", "reasoning": {"effort": "high"}}
    )
    tokens = [r["usage"]["output_tokens_details"]["reasoning_tokens"] for r in (low, high)]
    assert 0 < tokens[0] < tokens[1]
    assert high["output"][0]["type"] == "reasoning"
    assert high["output"][-1]["content"][0]["text"].startswith("Simulated answer")


def test_a_dry_run_placeholder_keeps_the_json_shape() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "json please"}],
        "response_format": {"type": "json_object"},
    }
    answer = MockUpstream(words).answer("openai", "chat", body, text="[estimate] up to $0.01")
    assert json.loads(answer["choices"][0]["message"]["content"])["answer"].startswith("[estimate]")


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        (
            "chat",
            {
                "model": "gpt-4o-mini",
                "n": 2,
                "messages": [{"role": "user", "content": "w"}],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "integer"}},
                                "required": ["a"],
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
        ),
        (
            "responses",
            {
                "model": "o4-mini",
                "input": "w",
                "tools": [
                    {
                        "type": "function",
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}},
                    }
                ],
                "tool_choice": "auto",
            },
        ),
        (
            "messages",
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 300,
                "messages": [{"role": "user", "content": "w"}],
                "tools": [
                    {
                        "name": "f",
                        "input_schema": {
                            "type": "object",
                            "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
                        },
                    }
                ],
                "tool_choice": {"type": "any"},
            },
        ),
    ],
)
def test_shaped_answers_stream_and_assemble_back(endpoint: str, body: dict[str, Any]) -> None:
    full = MockUpstream(words).answer("openai", endpoint, body)
    events = synthesise(endpoint, full, include_usage=True)
    assert assemble(endpoint, parse_events(b"".join(e.encode() for e in events))) == full
    kinds = [json.loads(e.data).get("type") for e in events if e.data != "[DONE]"]
    if endpoint == "chat":
        assert {c["finish_reason"] for c in full["choices"]} == {"tool_calls"}
        assert len(events) > 2 * 4  # role, call opening, argument pieces, finish: per choice
    elif endpoint == "responses":
        assert "response.function_call_arguments.done" in kinds
        assert full["output"][-1]["type"] == "function_call"
    else:
        assert full["stop_reason"] == "tool_use"
        assert kinds.count("content_block_delta") >= 1
