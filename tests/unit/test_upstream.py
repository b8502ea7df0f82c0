"""Provider routing, keys on the host, retries that honour Retry-After — against the
fake provider server over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.fakes.providers import FakeProvider
from wflo_jupyter.core.errors import ConfigError
from wflo_jupyter.gateway.streams import assemble, parse_events
from wflo_jupyter.gateway.upstream import (
    ProviderRoutes,
    Upstream,
    error_body,
    retry_after_seconds,
    scrub,
)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


def _upstream(fake: FakeProvider, sleeps: list[float]) -> Upstream:
    routes = ProviderRoutes.from_env(
        {
            "OPENAI_API_KEY": "sk-host-secret",
            "ANTHROPIC_API_KEY": "sk-ant-host",
            "WFLO_OPENAI_BASE_URL": fake.base_url,
            "WFLO_ANTHROPIC_BASE_URL": fake.url,
        }
    )
    return Upstream(routes, sleep=sleeps.append, backoff_s=0.01)


def test_host_key_is_added_and_sandbox_token_dropped(fake: FakeProvider) -> None:
    upstream = _upstream(fake, [])
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "k"}]})
    with upstream.send(
        "openai",
        "/v1/chat/completions",
        body.encode(),
        {"authorization": "Bearer wflo-session-token", "x-custom": "no"},
    ) as reply:
        assert reply.status == 200
        assert json.loads(reply.body)["choices"][0]["message"]["content"] == "echo: k"
    sent = fake.requests[-1].headers
    assert sent["authorization"] == "Bearer sk-host-secret"
    assert "x-custom" not in sent
    with upstream.send(
        "anthropic",
        "/v1/messages",
        json.dumps(
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}],
            }
        ).encode(),
        {"x-api-key": "wflo-token"},
    ) as reply:
        assert reply.status == 200
    sent = fake.requests[-1].headers
    assert sent["x-api-key"] == "sk-ant-host" and "anthropic-version" in sent


def test_retry_after_is_honoured(fake: FakeProvider) -> None:
    sleeps: list[float] = []
    upstream = _upstream(fake, sleeps)
    fake.fail_next(429, retry_after=2, times=2)
    with upstream.send(
        "openai", "/v1/chat/completions", b'{"model":"m","messages":[]}', {}
    ) as reply:
        assert reply.status == 200 and reply.attempts == 3
    assert sleeps == [2.0, 2.0]
    assert len(fake.requests) == 3


def test_retries_give_up_with_the_provider_error(fake: FakeProvider) -> None:
    upstream = _upstream(fake, [])
    fake.fail_next(503, times=10)
    with upstream.send("openai", "/v1/chat/completions", b"{}", {}) as reply:
        assert reply.status == 503 and reply.attempts == 4
        assert json.loads(reply.body)["error"]["type"] == "invalid_request_error"


def test_client_errors_are_not_retried(fake: FakeProvider) -> None:
    upstream = _upstream(fake, [])
    fake.fail_next(400)
    with upstream.send("openai", "/v1/chat/completions", b"{}", {}) as reply:
        assert reply.status == 400 and reply.attempts == 1


def test_stream_passes_chunks_through(fake: FakeProvider) -> None:
    upstream = _upstream(fake, [])
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "s"}],
    }
    with upstream.send(
        "openai", "/v1/chat/completions", json.dumps(body).encode(), {}, stream=True
    ) as reply:
        assert reply.chunks is not None
        raw = b"".join(reply.chunks)
    assembled = assemble("chat", parse_events(raw))
    assert assembled["choices"][0]["message"]["content"] == "echo: s"


def test_unreachable_provider_is_a_connection_error() -> None:
    routes = ProviderRoutes.from_env({"WFLO_OPENAI_BASE_URL": "http://127.0.0.1:1/v1"})
    upstream = Upstream(routes, max_retries=1, sleep=lambda _s: None)
    with (
        pytest.raises(ConnectionError, match="openai: ConnectError"),
        upstream.send("openai", "/v1/chat/completions", b"{}", {}),
    ):
        pass


def test_helpers() -> None:
    assert retry_after_seconds({"Retry-After": "3"}, 30) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}, 30) == 0.25
    assert retry_after_seconds({"retry-after": "999"}, 30) == 30
    assert retry_after_seconds({}, 30) is None
    assert scrub("key sk-a and sk-a", ["sk-a"]) == "key [redacted] and [redacted]"
    assert error_body("anthropic", 429, "m")["error"]["type"] == "rate_limit_error"
    assert error_body("openai", 402, "m")["error"]["code"] == "insufficient_quota"
    with pytest.raises(ConfigError, match="WFLO_OPENAI_BASE_URL: 'ftp://x' is not an http"):
        ProviderRoutes.from_env({"WFLO_OPENAI_BASE_URL": "ftp://x"})
