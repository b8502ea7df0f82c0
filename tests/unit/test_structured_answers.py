"""The official SDKs' structured-output and tool-use code works against the product's
offline mock (``MockUpstream`` over HTTP) and against the test fake provider alike:
``parse(response_format=Model)``, ``json_object``, ``n``, forced and automatic tool calls,
streamed or not, Responses ``parse(text_format=Model)`` and function calls, Anthropic
``tool_use`` (``create``, ``stream``) and ``parse(output_format=Model)``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import anthropic
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.fakes.mock_server import MockServer
from tests.fakes.providers import FakeProvider
from wflo_jupyter.gateway.mock import MockUpstream
from wflo_jupyter.ledger.tokens import TokenCounter


class Step(BaseModel):
    explanation: str
    output: str


class Maths(BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: float = Field(ge=0, le=1)
    level: Literal["easy", "hard"]
    note: str | None = None


class Weather(BaseModel):
    city: str
    unit: Literal["c", "f"]
    days: int = Field(ge=1, le=7)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": Weather.model_json_schema(),
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module", params=["mock", "fake"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    if request.param == "mock":
        counter = TokenCounter(tmp_path_factory.mktemp("home"))
        served: Any = MockServer(MockUpstream(lambda p, m, b: counter.count(p, m, b)[0]))
    else:
        served = FakeProvider()
    yield served
    served.close()


@pytest.fixture
def oai(server: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=server.base_url, max_retries=0)


@pytest.fixture
def ant(server: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)


# -- Chat Completions ---------------------------------------------------------------------
def test_chat_parse_gives_a_model(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Maths)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Maths)
    assert reply.choices[0].finish_reason == "stop"
    assert Maths.model_validate_json(reply.choices[0].message.content or "") == parsed


def test_chat_json_object_is_json(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_chat_n_choices(oai: openai.OpenAI) -> None:
    one = oai.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    two = oai.chat.completions.create(model="gpt-4o-mini", messages=ASK, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content != two.choices[1].message.content
    assert one.usage is not None and two.usage is not None
    assert two.usage.completion_tokens > one.usage.completion_tokens


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_chat_forced_tool_call(oai: openai.OpenAI, choice: Any) -> None:
    reply = oai.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice
    )
    first = reply.choices[0]
    assert first.finish_reason == "tool_calls"
    assert first.message.content is None
    calls = first.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    schema = {
        "get_weather": Weather.model_json_schema(),
        "get_time": TIME_TOOL["function"]["parameters"],
    }  # type: ignore[index]
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), schema[call.function.name])


def test_chat_auto_calls_then_answers_after_the_tool_result(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL])
    call = (first.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    second = oai.chat.completions.create(
        model="gpt-4o-mini", messages=history, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    none = oai.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None


def test_chat_stream_helper_parses_tool_arguments(oai: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(Weather)
    with oai.chat.completions.stream(
        model="gpt-4o-mini", messages=ASK, tools=[tool], tool_choice="required"
    ) as stream:
        final = stream.get_final_completion()
    call = (final.choices[0].message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, Weather)


def test_chat_stream_helper_parses_the_format(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o-mini", messages=ASK, response_format=Maths
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Maths)


def test_plain_stream_with_n_and_tool_calls(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=ASK,
            n=2,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    arguments: dict[int, str] = {0: "", 1: ""}
    names: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[choice.index] = delta.function.name
                arguments[choice.index] += (delta.function and delta.function.arguments) or ""
    assert names == {0: "get_weather", 1: "get_weather"}
    for text in arguments.values():
        Weather.model_validate_json(text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


# -- Responses ----------------------------------------------------------------------------
def test_responses_parse_gives_a_model(oai: openai.OpenAI) -> None:
    reply = oai.responses.parse(model="gpt-4o-mini", input="solve 2x=4", text_format=Maths)
    assert isinstance(reply.output_parsed, Maths)


def test_responses_function_call(oai: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": Weather.model_json_schema()}
    reply = oai.responses.create(
        model="gpt-4o-mini",
        input="weather?",
        tools=[tool],
        tool_choice="required",  # type: ignore[list-item]
    )
    calls = [item for item in reply.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].status == "completed"
    Weather.model_validate_json(calls[0].arguments)
    answered = oai.responses.create(
        model="gpt-4o-mini",
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21C"},
        ],
        tools=[tool],  # type: ignore[list-item]
    )
    assert answered.output_text


def test_responses_stream_with_function_call_and_format(oai: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(Weather)
    with oai.responses.stream(
        model="gpt-4o-mini",
        input="weather?",
        tools=[{"type": "function", **tool["function"]}],
        tool_choice="required",  # type: ignore[list-item]
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    call = next(item for item in final.output if item.type == "function_call")
    Weather.model_validate_json(call.arguments)
    with oai.responses.stream(model="gpt-4o-mini", input="x", text_format=Maths) as stream:
        assert isinstance(stream.get_final_response().output_parsed, Maths)


# -- Anthropic Messages ------------------------------------------------------------------------
ANT_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "w", "input_schema": Weather.model_json_schema()}
]


def test_anthropic_tool_use(ant: anthropic.Anthropic) -> None:
    reply = ant.messages.create(
        model="claude-haiku-4-5",
        max_tokens=500,
        messages=ASK,  # type: ignore[arg-type]
        tools=ANT_TOOLS,
        tool_choice={"type": "any"},
    )
    assert reply.stop_reason == "tool_use"
    block = next(b for b in reply.content if b.type == "tool_use")
    assert block.name == "get_weather" and block.id.startswith("toolu_")
    Weather.model_validate(block.input)
    answered = ant.messages.create(
        model="claude-haiku-4-5",
        max_tokens=500,
        tools=ANT_TOOLS,
        messages=[
            *ASK,  # type: ignore[list-item]
            {"role": "assistant", "content": [block.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "21C"}],
            },
        ],
    )
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


def test_anthropic_stream_final_message_has_the_tool_use(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=500,
        messages=ASK,  # type: ignore[arg-type]
        tools=ANT_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        final = stream.get_final_message()
    block = next(b for b in final.content if b.type == "tool_use")
    assert final.stop_reason == "tool_use"
    Weather.model_validate(block.input)


def test_anthropic_parse_output_format(ant: anthropic.Anthropic) -> None:
    reply = ant.messages.parse(
        model="claude-sonnet-4-5",
        max_tokens=800,
        messages=ASK,
        output_format=Weather,  # type: ignore[arg-type]
    )
    assert isinstance(reply.parsed_output, Weather)


@pytest.fixture(scope="module")
def mock_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    counter = TokenCounter(tmp_path_factory.mktemp("home"))
    served = MockServer(MockUpstream(lambda p, m, b: counter.count(p, m, b)[0]))
    yield served
    served.close()


def test_mock_ids_say_simulated(mock_only: MockServer) -> None:
    oai = openai.OpenAI(api_key="k", base_url=mock_only.base_url, max_retries=0)
    chat = oai.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=[WEATHER_TOOL], tool_choice="required"
    )
    assert chat.id.startswith("chatcmpl-sim-")
    assert (chat.choices[0].message.tool_calls or [])[0].id.startswith("call_sim_")
    ant = anthropic.Anthropic(api_key="k", base_url=mock_only.url, max_retries=0)
    message = ant.messages.create(
        model="claude-haiku-4-5",
        max_tokens=200,
        messages=ASK,  # type: ignore[arg-type]
        tools=ANT_TOOLS,
        tool_choice={"type": "any"},
    )
    assert message.content[0].type == "tool_use"
    assert message.content[0].id.startswith("toolu_sim_")


def test_mock_reasoning_usage_through_the_sdk(mock_only: MockServer) -> None:
    oai = openai.OpenAI(api_key="k", base_url=mock_only.base_url, max_retries=0)
    reply = oai.chat.completions.create(model="o4-mini", messages=ASK, max_completion_tokens=2000)
    usage = reply.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning < usage.completion_tokens <= 2000
    chunks = list(
        oai.chat.completions.create(
            model="o4-mini",
            messages=ASK,
            max_completion_tokens=2000,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1].usage
    assert last is not None and last.completion_tokens_details is not None
    assert last.completion_tokens_details.reasoning_tokens == reasoning
    response = oai.responses.create(model="o4-mini", input="think", reasoning={"effort": "low"})
    assert response.usage is not None
    assert 0 < response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens
    assert response.output_text.startswith("Simulated answer")
