"""The SDK breadth suite: ordinary, unchanged openai and anthropic SDK code in ``%%wflo``
cells of a real kernel, sync and async, each call recorded in the ledger with the tokens
the SDK saw and their price.

Every case runs twice: against ``WFLO_PROVIDER=mock`` (the product's offline answers) and
against the fake provider server (tests/fakes: the provider's HTTP endpoint in its real
wire format). The cell prints one JSON line per call (what the SDK returned, as the
analyst's code sees it); the test checks it, then reads the step's ``llm_calls`` rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.providers import FakeProvider
from tests.kernel_driver import CellRun, Kernel
from tests.marks import LLM_KERNEL
from wflo_jupyter.core.pricing import normalise_usage
from wflo_jupyter.ledger.pricing import PriceBook

pytestmark = LLM_KERNEL

PROVIDERS = ("mock", "fake")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module", params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def kernel_env(provider: str, fake: FakeProvider) -> dict[str, str]:
    """The module's ``kernel`` answers offline (mock) or calls the fake provider."""
    if provider == "mock":
        return {"WFLO_PROVIDER": "mock"}
    return {
        "OPENAI_API_KEY": "sk-host-secret",
        "ANTHROPIC_API_KEY": "sk-ant-host-secret",
        "WFLO_OPENAI_BASE_URL": fake.base_url,
        "WFLO_ANTHROPIC_BASE_URL": fake.url,
    }


# -- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CallRow:
    provider: str
    endpoint: str
    model: str
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micros: int
    cached: bool
    simulated: bool


_LEDGER_QUERY = (
    "import json as _j\n"
    "from sqlalchemy import text as _t\n"
    "_s = get_ipython().find_magic('wflo').__self__.session\n"
    "with _s.ledger.engine.connect() as _c:\n"
    "    _rows = _c.execute(_t('SELECT c.provider, c.endpoint, c.model, c.input_tokens, '\n"
    "        'c.cache_read_tokens, c.cache_write_tokens, c.output_tokens, c.reasoning_tokens, '\n"
    "        'c.cost_micros, c.cached, c.simulated FROM llm_calls AS c JOIN steps AS s '\n"
    "        'ON s.id = c.step_id WHERE s.name = :n AND s.session_id = :sid '\n"
    "        'ORDER BY c.created_at, c.id'), {{'n': {name!r}, 'sid': _s.session_id}}).all()\n"
    "print(_j.dumps([list(_r) for _r in _rows]))\n"
)


def ledger_calls(kernel: Kernel, name: str) -> list[CallRow]:
    """The ``llm_calls`` rows of this kernel's step ``name``, oldest first."""
    run = kernel.run(_LEDGER_QUERY.format(name=name))
    assert run.status == "ok", run.error
    return [CallRow(*row) for row in json.loads(run.stdout)]


def step(kernel: Kernel, body: str, *, budget: str = "1.00") -> tuple[str, CellRun, list[Any]]:
    """Run ``body`` as a ``%%wflo`` step with a new name; its JSON lines, parsed."""
    name = f"breadth-{uuid.uuid4().hex[:10]}"
    run = kernel.run(f"%%wflo --budget {budget} --name {name}\n{body}")
    assert run.status == "ok", (run.error, run.stderr[-3000:])
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith(("{", "["))]
    return name, run, lines


PRICES = PriceBook()
FREE_ENDPOINTS = ("count_tokens", "models")


def assert_recorded(
    row: CallRow, provider: str, raw_usage: dict[str, Any], *, simulated: bool
) -> None:
    """The row holds the usage the SDK returned (``raw_usage``, the provider's own shape)
    and its price, and says whether the answer was simulated."""
    usage = normalise_usage(provider, raw_usage)
    assert (
        row.input_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.output_tokens,
        row.reasoning_tokens,
    ) == (
        usage.input,
        usage.cache_read,
        usage.cache_write_total,
        usage.output,
        usage.reasoning,
    ), (row, raw_usage)
    assert row.cost_micros == PRICES.cost_micros(provider, row.model, usage), row
    assert row.cost_micros > 0
    assert not row.cached
    assert row.simulated is simulated


def check_recorded(
    kernel: Kernel, name: str, provider: str, lines: list[dict[str, Any]], sim: bool
) -> list[CallRow]:
    """Every line's ``usage`` (with its ``api``: openai | anthropic) is one ledger row, in
    any order (concurrent calls settle in any order)."""
    rows = ledger_calls(kernel, name)
    assert len(rows) == len(lines), (rows, lines)
    remaining = list(rows)
    for line in lines:
        api = line.get("api", "openai")
        expected = normalise_usage(api, line["usage"])
        match = [
            r
            for r in remaining
            if (r.input_tokens, r.output_tokens, r.cache_read_tokens)
            == (expected.input, expected.output, expected.cache_read)
        ]
        assert match, (line, remaining)
        assert_recorded(match[0], api, line["usage"], simulated=sim)
        remaining.remove(match[0])
    return rows


# -- OpenAI ------------------------------------------------------------------------------

TOOLS = """
import json, openai
tools = [{"type": "function", "function": {"name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}},
    "strict": True}}]
"""


def test_chat_with_tools_sync_and_async(kernel: Kernel, provider: str) -> None:
    body = TOOLS + (
        "client = openai.OpenAI()\n"
        "messages = [{'role': 'user', 'content': 'What is the weather in Paris?'}]\n"
        "first = client.chat.completions.create(model='gpt-4o-mini', messages=messages,\n"
        "    tools=tools, tool_choice='required', max_tokens=200)\n"
        "call = first.choices[0].message.tool_calls[0]\n"
        "args = json.loads(call.function.arguments)\n"
        "print(json.dumps({'finish': first.choices[0].finish_reason, 'name': call.function.name,\n"
        "    'unit': args['unit'], 'city': type(args['city']).__name__, 'usage': first.usage.model_dump()}))\n"
        "messages += [first.choices[0].message.model_dump(exclude_none=True),\n"
        "    {'role': 'tool', 'tool_call_id': call.id, 'content': '18 C and sunny'}]\n"
        "second = client.chat.completions.create(model='gpt-4o-mini', messages=messages,\n"
        "    tools=tools, max_tokens=200)\n"
        "print(json.dumps({'finish': second.choices[0].finish_reason,\n"
        "    'text': bool(second.choices[0].message.content), 'usage': second.usage.model_dump()}))\n"
        "forced = await openai.AsyncOpenAI().chat.completions.create(model='gpt-4o-mini',\n"
        "    messages=messages[:1], tools=tools, max_tokens=200,\n"
        "    tool_choice={'type': 'function', 'function': {'name': 'get_weather'}})\n"
        "print(json.dumps({'finish': forced.choices[0].finish_reason,\n"
        "    'name': forced.choices[0].message.tool_calls[0].function.name,\n"
        "    'usage': forced.usage.model_dump()}))\n"
    )
    name, _, lines = step(kernel, body)
    first, second, forced = lines
    assert (first["finish"], first["name"], first["city"]) == ("tool_calls", "get_weather", "str")
    assert first["unit"] in ("c", "f")
    assert (second["finish"], second["text"]) == ("stop", True)
    assert (forced["finish"], forced["name"]) == ("tool_calls", "get_weather")
    check_recorded(kernel, name, "openai", lines, provider == "mock")


def test_json_object_json_schema_and_parse(kernel: Kernel, provider: str) -> None:
    body = (
        "import json, typing, openai, pydantic\n"
        "class Address(pydantic.BaseModel):\n"
        "    street: str\n"
        "    zip_code: str | None = None\n"
        "class City(pydantic.BaseModel):\n"
        "    name: str\n"
        "    population: int\n"
        "    country: typing.Literal['FR', 'DE', 'IT']\n"
        "    landmarks: list[str]\n"
        "    town_hall: Address\n"
        "client = openai.OpenAI()\n"
        "ask = [{'role': 'user', 'content': 'Describe Paris as JSON.'}]\n"
        "plain = client.chat.completions.create(model='gpt-4o-mini', messages=ask, max_tokens=300,\n"
        "    response_format={'type': 'json_object'})\n"
        "print(json.dumps({'kind': type(json.loads(plain.choices[0].message.content)).__name__,\n"
        "    'usage': plain.usage.model_dump()}))\n"
        "loose = client.chat.completions.create(model='gpt-4o-mini', messages=ask, max_tokens=300,\n"
        "    response_format={'type': 'json_schema', 'json_schema': {'name': 'city',\n"
        "        'schema': City.model_json_schema()}})\n"
        "city = City.model_validate_json(loose.choices[0].message.content)\n"
        "print(json.dumps({'country': city.country, 'usage': loose.usage.model_dump()}))\n"
        "parsed = client.chat.completions.parse(model='gpt-4o-mini', messages=ask,\n"
        "    max_tokens=300, response_format=City)\n"
        "got = parsed.choices[0].message.parsed\n"
        "print(json.dumps({'type': type(got).__name__, 'hall': type(got.town_hall).__name__,\n"
        "    'usage': parsed.usage.model_dump()}))\n"
    )
    name, _, lines = step(kernel, body)
    assert lines[0]["kind"] == "dict"
    assert lines[1]["country"] in ("FR", "DE", "IT")
    assert (lines[2]["type"], lines[2]["hall"]) == ("City", "Address")
    check_recorded(kernel, name, "openai", lines, provider == "mock")


def test_n_choices_and_a_stream_with_usage(kernel: Kernel, provider: str) -> None:
    body = (
        "import json, openai\n"
        "client = openai.OpenAI()\n"
        "two = client.chat.completions.create(model='gpt-4o-mini', n=2, max_tokens=60,\n"
        "    messages=[{'role': 'user', 'content': 'Two taglines for a bakery'}])\n"
        "print(json.dumps({'choices': sorted(c.index for c in two.choices),\n"
        "    'texts': all(c.message.content for c in two.choices), 'usage': two.usage.model_dump()}))\n"
        "stream = client.chat.completions.create(model='gpt-4o-mini', max_tokens=60, stream=True,\n"
        "    stream_options={'include_usage': True},\n"
        "    messages=[{'role': 'user', 'content': 'A haiku about bread'}])\n"
        "text, usage = '', None\n"
        "for chunk in stream:\n"
        "    if chunk.choices:\n"
        "        text += chunk.choices[0].delta.content or ''\n"
        "    if chunk.usage is not None:\n"
        "        usage = chunk.usage.model_dump()\n"
        "print(json.dumps({'text': bool(text), 'usage': usage}))\n"
    )
    name, _, lines = step(kernel, body)
    assert lines[0]["choices"] == [0, 1] and lines[0]["texts"]
    assert lines[1]["text"] and lines[1]["usage"] is not None
    check_recorded(kernel, name, "openai", lines, provider == "mock")


def test_responses_api_streamed_and_not(kernel: Kernel, provider: str) -> None:
    body = (
        "import json, openai\n"
        "client = openai.OpenAI()\n"
        "r = client.responses.create(model='gpt-4o-mini', input='Name a fruit', max_output_tokens=50)\n"
        "print(json.dumps({'api': 'openai', 'text': bool(r.output_text), 'usage': r.usage.model_dump()}))\n"
        "done = None\n"
        "with client.responses.stream(model='gpt-4o-mini', input='Name a colour',\n"
        "        max_output_tokens=50) as events:\n"
        "    deltas = sum(1 for e in events if e.type == 'response.output_text.delta')\n"
        "    done = events.get_final_response()\n"
        "print(json.dumps({'deltas': deltas, 'text': bool(done.output_text), 'usage': done.usage.model_dump()}))\n"
    )
    name, _, lines = step(kernel, body)
    assert lines[0]["text"] and lines[1]["text"] and lines[1]["deltas"] >= 1
    rows = check_recorded(kernel, name, "openai", lines, provider == "mock")
    assert {r.endpoint for r in rows} == {"responses"}


def test_embeddings_and_raw_response(kernel: Kernel, provider: str) -> None:
    body = (
        "import json, openai\n"
        "client = openai.OpenAI()\n"
        "e = client.embeddings.create(model='text-embedding-3-small', input=['one', 'two'])\n"
        "print(json.dumps({'n': len(e.data), 'dims': len(e.data[0].embedding),\n"
        "    'usage': {'prompt_tokens': e.usage.prompt_tokens, 'completion_tokens': 0}}))\n"
        "raw = client.chat.completions.with_raw_response.create(model='gpt-4o-mini', max_tokens=30,\n"
        "    messages=[{'role': 'user', 'content': 'raw please'}])\n"
        "parsed = raw.parse()\n"
        "print(json.dumps({'status': raw.status_code, 'type': raw.headers.get('content-type'),\n"
        "    'text': bool(parsed.choices[0].message.content), 'usage': parsed.usage.model_dump()}))\n"
    )
    name, _, lines = step(kernel, body)
    assert lines[0]["n"] == 2 and lines[0]["dims"] > 0
    assert lines[1]["status"] == 200 and lines[1]["type"].startswith("application/json")
    rows = check_recorded(kernel, name, "openai", lines, provider == "mock")
    assert sorted(r.endpoint for r in rows) == ["chat", "embeddings"]


def test_async_client_gathers_eight_calls_and_survives_to_the_next_cell(
    kernel: Kernel, provider: str
) -> None:
    marker = uuid.uuid4().hex[:8]
    name, _, first = step(
        kernel,
        "import json, asyncio, openai\n"
        "aclient = openai.AsyncOpenAI()\n"
        "r = await aclient.chat.completions.create(model='gpt-4o-mini', max_tokens=30,\n"
        f"    messages=[{{'role': 'user', 'content': 'warm up {marker}'}}])\n"
        "print(json.dumps({'usage': r.usage.model_dump()}))\n",
    )
    check_recorded(kernel, name, "openai", first, provider == "mock")
    name, _, lines = step(
        kernel,
        "replies = await asyncio.gather(*[aclient.chat.completions.create(model='gpt-4o-mini',\n"
        f"    max_tokens=30, messages=[{{'role': 'user', 'content': f'call {marker} {{i}}'}}])\n"
        "    for i in range(8)])\n"
        "for r in replies:\n"
        "    print(json.dumps({'usage': r.usage.model_dump()}))\n"
        "await aclient.close()\n",
    )
    assert len(lines) == 8
    check_recorded(kernel, name, "openai", lines, provider == "mock")


# -- Anthropic ----------------------------------------------------------------------------


def test_anthropic_tools_stream_count_tokens_and_prompt_caching(
    kernel: Kernel, provider: str
) -> None:
    body = (
        "import json, anthropic\n"
        "client = anthropic.Anthropic()\n"
        "tools = [{'name': 'get_weather', 'description': 'The weather in a city',\n"
        "    'input_schema': {'type': 'object', 'required': ['city'],\n"
        "        'properties': {'city': {'type': 'string'}, 'days': {'type': 'integer', 'minimum': 1}}}}]\n"
        "ask = [{'role': 'user', 'content': 'Weather in Rome?'}]\n"
        "m = client.messages.create(model='claude-haiku-4-5', max_tokens=200, messages=ask,\n"
        "    tools=tools, tool_choice={'type': 'any'})\n"
        "use = [b for b in m.content if b.type == 'tool_use'][0]\n"
        "print(json.dumps({'api': 'anthropic', 'stop': m.stop_reason, 'name': use.name,\n"
        "    'city': type(use.input['city']).__name__, 'usage': m.usage.model_dump()}))\n"
        "with client.messages.stream(model='claude-haiku-4-5', max_tokens=200, messages=ask,\n"
        "        tools=tools, tool_choice={'type': 'tool', 'name': 'get_weather'}) as s:\n"
        "    final = s.get_final_message()\n"
        "print(json.dumps({'api': 'anthropic', 'stop': final.stop_reason,\n"
        "    'blocks': [b.type for b in final.content], 'usage': final.usage.model_dump()}))\n"
        "counted = client.messages.count_tokens(model='claude-haiku-4-5', messages=ask)\n"
        "print('counted', counted.input_tokens)\n"
        "system = [{'type': 'text', 'text': 'You are a weather bot. ' * 400,\n"
        "    'cache_control': {'type': 'ephemeral'}}]\n"
        "for q in ('Rome?', 'Oslo?'):\n"
        "    c = client.messages.create(model='claude-haiku-4-5', max_tokens=50, system=system,\n"
        "        messages=[{'role': 'user', 'content': q}])\n"
        "    print(json.dumps({'api': 'anthropic', 'usage': c.usage.model_dump()}))\n"
    )
    name, run, lines = step(kernel, body)
    tool, streamed, cache_write, cache_read = lines
    assert (tool["stop"], tool["name"], tool["city"]) == ("tool_use", "get_weather", "str")
    assert streamed["stop"] == "tool_use" and "tool_use" in streamed["blocks"]
    counted = [line for line in run.stdout.splitlines() if line.startswith("counted ")]
    assert int(counted[0].split()[1]) > 0
    if provider == "fake":  # the fake provider caches the system prompt as Anthropic does
        assert cache_write["usage"]["cache_creation_input_tokens"] > 0
        assert cache_read["usage"]["cache_read_input_tokens"] > 0
    rows = ledger_calls(kernel, name)
    free = [r for r in rows if r.endpoint == "count_tokens"]
    assert len(free) == 1 and free[0].cost_micros == 0
    paid = [r for r in rows if r.endpoint != "count_tokens"]
    assert len(paid) == 4
    for row, line in zip(paid, lines, strict=True):
        assert_recorded(row, "anthropic", line["usage"], simulated=provider == "mock")


def test_free_model_listing(kernel: Kernel, provider: str) -> None:
    name, _, lines = step(
        kernel,
        "import json, openai, anthropic\n"
        "models = [m.id for m in openai.OpenAI().models.list()]\n"
        "one = openai.OpenAI().models.retrieve('gpt-4o-mini')\n"
        "claude = [m.id for m in anthropic.Anthropic().models.list()]\n"
        "print(json.dumps({'openai': len(models), 'one': one.id, 'anthropic': len(claude)}))\n",
    )
    assert lines[0]["openai"] > 0 and lines[0]["anthropic"] > 0
    assert lines[0]["one"] == "gpt-4o-mini"
    rows = ledger_calls(kernel, name)
    assert len(rows) == 3 and all(r.cost_micros == 0 for r in rows)


# -- refusals -------------------------------------------------------------------------------


def test_a_refusal_over_budget_in_each_apis_shape(kernel: Kernel, provider: str) -> None:
    body = (
        "import json, openai, anthropic\n"
        "o, a = openai.OpenAI(max_retries=0), anthropic.Anthropic(max_retries=0)\n"
        "calls = {\n"
        "    'chat': lambda: o.chat.completions.create(model='gpt-4o', max_tokens=4000,\n"
        "        messages=[{'role': 'user', 'content': 'hi'}]),\n"
        "    'responses': lambda: o.responses.create(model='gpt-4o', input='hi',\n"
        "        max_output_tokens=4000),\n"
        "    'messages': lambda: a.messages.create(model='claude-sonnet-4-5', max_tokens=4000,\n"
        "        messages=[{'role': 'user', 'content': 'hi'}]),\n"
        "}\n"
        "for api, call in calls.items():\n"
        "    try:\n"
        "        call()\n"
        "    except (openai.APIStatusError, anthropic.APIStatusError) as exc:\n"
        "        print(json.dumps({'api': api, 'status': exc.status_code,\n"
        "            'type': type(exc).__name__, 'body': exc.body}))\n"
    )
    name, _, lines = step(kernel, body, budget="0.001")
    assert [line["api"] for line in lines] == ["chat", "responses", "messages"]
    for line in lines:
        assert line["status"] == 402
        assert "BudgetExceeded" in json.dumps(line["body"])
    assert lines[0]["body"]["type"] == "insufficient_quota"  # the SDK's body is error's content
    assert lines[2]["body"]["error"]["type"] == "billing_error"
    assert ledger_calls(kernel, name) == []
