"""Routes of the sandbox's LLM proxy (``sandbox.agent.llm_routes``) and the host's check
of an ``llm_request`` frame (``gateway.channel.request_from_frame``): the free routes,
and hostile paths that must never reach another upstream path."""

from __future__ import annotations

import pytest

from wflo_jupyter.gateway.channel import BadLlmRequest, request_from_frame
from wflo_jupyter.sandbox.agent.llm_routes import (
    MODEL_ID_MAX,
    Route,
    RouteRefused,
    provider_from_headers,
    resolve,
)


@pytest.mark.parametrize(
    ("method", "target", "provider", "expected"),
    [
        (
            "POST",
            "/v1/chat/completions?x=1",
            "anthropic",
            ("openai", "chat", "POST", "/v1/chat/completions", None),
        ),
        (
            "POST",
            "/messages/count_tokens",
            "openai",
            ("anthropic", "count_tokens", "POST", "/v1/messages/count_tokens", None),
        ),
        (
            "POST",
            "/v1/messages/count_tokens/",
            "openai",
            ("anthropic", "count_tokens", "POST", "/v1/messages/count_tokens", None),
        ),
        ("GET", "/v1/models", "openai", ("openai", "models", "GET", "/v1/models", None)),
        ("GET", "/models/", "anthropic", ("anthropic", "models", "GET", "/v1/models", None)),
        (
            "GET",
            "/v1/models/gpt-4o-mini",
            "openai",
            ("openai", "models", "GET", "/v1/models/gpt-4o-mini", "gpt-4o-mini"),
        ),
        (
            "GET",
            "/v1/models/ft:gpt-4o-mini-2024-07-18:acme::abc123",
            "openai",
            (
                "openai",
                "models",
                "GET",
                "/v1/models/ft:gpt-4o-mini-2024-07-18:acme::abc123",
                "ft:gpt-4o-mini-2024-07-18:acme::abc123",
            ),
        ),
        (
            "GET",
            "/v1/models/ft%3Agpt-4o",
            "openai",
            ("openai", "models", "GET", "/v1/models/ft:gpt-4o", "ft:gpt-4o"),
        ),
        # OpenAI's list has no query: dropped; Anthropic's cursors kept, rebuilt in order
        ("GET", "/v1/models?limit=5", "openai", ("openai", "models", "GET", "/v1/models", None)),
        (
            "GET",
            "/v1/models?after_id=claude-3-haiku&limit=5&evil=../x",
            "anthropic",
            ("anthropic", "models", "GET", "/v1/models?limit=5&after_id=claude-3-haiku", None),
        ),
        (
            "GET",
            "/v1/models/claude-3-5-haiku-latest?beta=true",
            "anthropic",
            (
                "anthropic",
                "models",
                "GET",
                "/v1/models/claude-3-5-haiku-latest",
                "claude-3-5-haiku-latest",
            ),
        ),
    ],
)
def test_routes(method: str, target: str, provider: str, expected: tuple) -> None:
    assert resolve(method, target, provider) == Route(*expected)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/v1/models/../chat/completions", 400),
        ("GET", "/v1/models/%2e%2e", 400),
        ("GET", "/v1/models/%2E%2E/chat/completions", 400),
        ("GET", "/v1/models/..%2fchat%2fcompletions", 400),
        ("GET", "/v1/models/%252e%252e", 400),  # decoded once only: "%2e%2e" is refused
        ("GET", "/v1/models/.hidden", 400),
        ("GET", "/v1/models/gpt-4o%3Fx=1", 400),
        ("GET", "/v1/models/gpt%204o", 400),
        ("GET", "/v1/models/%ff", 400),
        ("GET", "/v1/models/" + "a" * (MODEL_ID_MAX + 1), 400),
        ("GET", "/v1/models/a/b", 400),
        ("GET", "/v1/models?limit=0", 200),  # OpenAI: the query is dropped, not checked
        ("GET", "/v1/files", 404),
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/models", 404),
        ("POST", "/v1/messages/count_tokens/../batches", 404),
        ("DELETE", "/v1/models/gpt-4o", 405),
    ],
)
def test_hostile_and_unknown_paths_are_refused(method: str, target: str, status: int) -> None:
    if status == 200:
        assert resolve(method, target, "openai").path == "/v1/models"
        return
    with pytest.raises(RouteRefused) as refused:
        resolve(method, target, "openai")
    assert refused.value.status == status


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=-1", "limit=1e3", "after_id=../x", "before_id=" + "b" * 200],
)
def test_anthropic_list_cursors_are_validated(query: str) -> None:
    with pytest.raises(RouteRefused) as refused:
        resolve("GET", f"/v1/models?{query}", "anthropic")
    assert refused.value.status == 400
    assert resolve("GET", "/v1/models?limit=1000", "anthropic").path == "/v1/models?limit=1000"


def test_the_provider_of_a_models_call_comes_from_the_sdks_headers() -> None:
    anthropic = {"anthropic-version": "2023-06-01", "x-api-key": "t"}
    assert provider_from_headers(anthropic.get) == "anthropic"
    assert provider_from_headers({"x-api-key": "t"}.get) == "anthropic"
    assert provider_from_headers({"authorization": "Bearer t"}.get) == "openai"


def _frame(**extra: object) -> dict:
    return {"type": "llm_request", "id": "r", "cell": None, "headers": {}, "body": {}, **extra}


def test_the_host_accepts_free_frames_and_old_frames() -> None:
    request = request_from_frame(
        _frame(
            provider="anthropic", endpoint="models", method="GET", path="/v1/models/claude-3-haiku"
        )
    )
    assert (request.provider, request.endpoint, request.method, request.path) == (
        "anthropic",
        "models",
        "GET",
        "/v1/models/claude-3-haiku",
    )
    assert request.free
    counted = request_from_frame(
        _frame(path="/v1/messages/count_tokens", body={"model": "claude-3-haiku", "messages": []})
    )
    assert (counted.method, counted.endpoint, counted.free) == ("POST", "count_tokens", True)
    old = request_from_frame(_frame(path="/v1/chat/completions", body={"model": "m"}))
    assert (old.method, old.endpoint, old.free) == ("POST", "chat", False)


@pytest.mark.parametrize(
    "frame",
    [
        _frame(method="GET", provider="openai", path="/v1/models/../chat/completions"),
        _frame(method="GET", provider="openai", path="/v1/models/%2e%2e"),
        _frame(method="GET", provider="openai", path="/v1/models/" + "x" * 500),
        _frame(method="GET", provider="evil", path="/v1/models"),
        _frame(method="GET", provider="openai", path="/v1/chat/completions"),
        _frame(method="PUT", provider="openai", path="/v1/models"),
        _frame(method=None, provider="openai", path="/v1/models"),
        _frame(method="GET", provider="openai", path=["/v1/models"]),
        _frame(method="POST", provider="openai", path="/v1/models"),
    ],
)
def test_the_host_refuses_hostile_frames(frame: dict) -> None:
    with pytest.raises(BadLlmRequest):
        request_from_frame(frame)
