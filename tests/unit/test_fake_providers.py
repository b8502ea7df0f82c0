"""The fake provider speaks the wire formats the official SDKs accept (sync, async,
streaming), with usage details and error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fakes.providers import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


def test_openai_chat_sync_with_usage_details(fake: FakeProvider) -> None:
    fake.state.cached_tokens = 7
    fake.state.reasoning_tokens = 3
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}], max_tokens=50
    )
    assert reply.choices[0].message.content == "echo: hi there"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 7
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 3
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test"


def test_openai_chat_stream_with_usage(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a b c"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_openai_async_responses_and_embeddings(fake: FakeProvider) -> None:
    async def go() -> tuple[str, int]:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
        try:
            response = await client.responses.create(model="gpt-4o-mini", input="hello")
            embedding = await client.embeddings.create(
                model="text-embedding-3-small", input=["x", "y"]
            )
            return response.output_text, len(embedding.data)
        finally:
            await client.close()

    assert asyncio.run(go()) == ("echo: hello", 2)


def test_openai_responses_stream(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
    with client.responses.stream(model="gpt-4o-mini", input="streamed") as stream:
        final = stream.get_final_response()
    assert final.output_text == "echo: streamed"
    assert final.usage is not None and final.usage.output_tokens >= 1


def test_openai_rate_limit_error_shape(fake: FakeProvider) -> None:
    fake.fail_next(429, retry_after=0)
    client = openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "0"


def test_anthropic_messages_sync_stream_and_async(fake: FakeProvider) -> None:
    fake.state.cached_tokens = 5
    client = anthropic.Anthropic(base_url=fake.url, api_key="sk-ant", max_retries=0)
    message = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "yo"}],
    )
    assert message.content[0].type == "text" and message.content[0].text == "echo: yo"
    assert message.usage.cache_read_input_tokens == 5
    headers = fake.requests[-1].headers
    assert "sk-ant" in (headers.get("x-api-key", "") + headers.get("authorization", ""))
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "s t"}],
    ) as stream:
        assert stream.get_final_text() == "echo: s t"

    async def go() -> str:
        aclient = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
        try:
            reply = await aclient.messages.create(
                model="claude-haiku-4-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "z"}],
            )
            block = reply.content[0]
            return block.text if block.type == "text" else ""
        finally:
            await aclient.close()

    assert asyncio.run(go()) == "echo: z"


def test_anthropic_error_shape(fake: FakeProvider) -> None:
    fake.fail_next(429, retry_after=1)
    client = anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
